/// \file parameters_io.h
/// \brief Parameter vectors and buffers as safetensors files with PyTorch state_dict names ("0.weight", "0.bias", …).
///
/// \code
/// natgrad::Vec<float> theta = natgrad::load_parameters<float>("weights.safetensors", model);
/// natgrad::save_parameters("direction.safetensors", model, direction, natgrad::DType::F32);
/// \endcode
#pragma once

#include <natgrad/io/safetensors.h>
#include <natgrad/model/network.h>

#include <map>
#include <string>

namespace natgrad {

/// Reads every parameter tensor of the model; missing, extra, wrongly shaped, non-float or non-finite
/// tensors are errors naming the file and the tensor. The model's buffers (and `num_batches_tracked`) may be
/// present, as in a `state_dict()`: they are not parameters, and load_buffers reads them. Tensors stored in another float type (F16, BF16, or
/// F64 for a float model) are converted; if `conversion` is given it then says which ("converted F16 to
/// float32"), and is left empty otherwise.
template <typename Scalar>
Vec<Scalar> load_parameters(const std::string& path, const Network<Scalar>& model,
                            std::string* conversion = nullptr);

/// Sets the model's buffers (batch norm's running_mean and running_var) from the file's tensors of the same
/// names, converted from any dtype; a missing or wrongly shaped buffer, or values the layer rejects (a
/// negative variance), are errors naming the file and the buffer. A model without buffers reads nothing.
template <typename Scalar>
void load_buffers(const std::string& path, Network<Scalar>& model);

/// Writes v (num_params entries) under the model's tensor names and shapes as F32 or F64.
template <typename Scalar>
void save_parameters(const std::string& path, const Network<Scalar>& model, const Vec<Scalar>& v, DType dtype,
                     const std::map<std::string, std::string>& metadata = {});

/// Writes v (num_params entries), a tied tensor again under each tied module's name ("head.weight" beside
/// "tok.weight"), and the model's buffers (batch norm's running statistics, an attention mask) under their
/// state_dict names and shapes as F32 or F64: what load_parameters and load_buffers read back, and a module's
/// state_dict but for batch norm's `num_batches_tracked`.
template <typename Scalar>
void save_state_dict(const std::string& path, const Network<Scalar>& model, const Vec<Scalar>& v, DType dtype,
                     const std::map<std::string, std::string>& metadata = {});

/// Writes the K columns of V (num_params × K) as one tensor per parameter name of shape [K, ...shape]
/// (F32 or F64): column i under each name's index i, so `{n: t[i] for n, t in d.items()}` is a state_dict.
template <typename Scalar>
void save_parameter_stack(const std::string& path, const Network<Scalar>& model, const Mat<double>& V, DType dtype,
                          const std::map<std::string, std::string>& metadata = {});

}  // namespace natgrad
