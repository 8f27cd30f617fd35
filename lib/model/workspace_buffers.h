// Private: what a Workspace holds (network.h), sized by Network::make_workspace from the buffer plan.
#pragma once

#include <natgrad/model/network.h>

#include <vector>

namespace natgrad {

template <typename Scalar>
struct Workspace<Scalar>::Buffers {
  Index max_cols = 0;
  std::vector<Buffer> slots;              // tangents / cotangents of live values, slot width × max_cols each
  Buffer sum;                             // a cotangent being added to one that is already there (fan-out)
  Buffer scratch;                         // layer scratch (im2col buffers)
  std::vector<const Scalar*> values;      // per value, its tangent (nullptr: zero) or cotangent
  std::vector<const Scalar*> operands;    // a merge node's operands' tangents
  std::vector<const Scalar*> operand_values;  // and their values
  const Scalar* result = nullptr;         // where the last jvp left its output (output_size × n)
  std::vector<double>* timing = nullptr;  // profiling: per node, seconds added (nullptr: off)
};

}  // namespace natgrad
