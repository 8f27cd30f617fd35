/// \file memory_estimate.h
/// \brief What a solve will hold in memory, computed from the model and the options before anything runs.
///
/// \code
/// natgrad::MemoryEstimate m = natgrad::estimate_solve_memory(spec, 1000, 1000, sizeof(float), fisher, 10, 2);
/// std::cout << m.total / 1e9 << " GB\n";
/// \endcode
#pragma once

#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/model/layer_spec.h>

#include <cstddef>
#include <string>

namespace natgrad {

struct MemoryEstimate {
  std::size_t parameters = 0;   ///< θ and the parameter-sized vectors of the solve (g, d, CG's r, z, p, Ap)
  std::size_t activations = 0;  ///< the cached forward pass(es) and the network outputs' curvature
  std::size_t workspaces = 0;   ///< per-thread tangent and im2col buffers
  std::size_t slots = 0;        ///< the fixed-order accumulation buffers
  std::size_t spectrum = 0;     ///< Lanczos basis (double), if a spectrum is asked
  std::size_t data = 0;         ///< the batch itself
  std::size_t total = 0;
  std::string report() const;
};

/// `batch` samples for the gradient, `curvature_batch` (≤ batch) for F; `top_k` > 0 adds a Lanczos basis.
MemoryEstimate estimate_solve_memory(const ModelSpec& spec, Index batch, Index curvature_batch, std::size_t scalar_bytes,
                                     const FisherOptions& fisher, Index top_k, int threads);

/// Physical memory currently available (MemAvailable in /proc/meminfo), or 0 if unknown.
std::size_t available_memory_bytes();

}  // namespace natgrad
