// Arrays between NumPy and natgrad, for the Fisher and the optimizers: a batch from NumPy arrays (C-ordered,
// [N, ...]) as natgrad's columns and the targets as the model's likelihood takes them; the parameters;
// results back as NumPy arrays.
#pragma once

#include <natgrad/core/dataset.h>
#include <pybind11/numpy.h>

#include <stdexcept>
#include <string>

#include "bindings.h"

namespace natgrad {
namespace python {

template <typename Scalar>
using Array = py::array_t<Scalar, py::array::c_style | py::array::forcecast>;

/// "[9, 4]" — an array's shape, for messages.
inline std::string shape_of(const py::array& a) {
  std::string s = "[";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

/// A result as a NumPy array: a copy of a vector C++ keeps; a vector handed over (an rvalue) without a copy,
/// the array owning it.
template <typename Scalar>
py::array_t<Scalar> to_array(const Vec<Scalar>& v) {
  return py::array_t<Scalar>(v.size(), v.data());
}

template <typename Scalar>
py::array_t<Scalar> to_array(Vec<Scalar>&& v) {
  auto* owner = new Vec<Scalar>(std::move(v));
  py::capsule release(owner, [](void* p) { delete static_cast<Vec<Scalar>*>(p); });
  return py::array_t<Scalar>(owner->size(), owner->data(), release);
}

/// inputs [N, ...] (each sample the model's input size; Network::check_inputs checks it); targets: int64
/// labels [N] or [N, T] for a categorical likelihood, real targets [N, ...] (T·C per sample) otherwise.
template <typename Scalar>
Dataset<Scalar> make_batch(const Model& model, const py::array& inputs, const py::array& targets) {
  const auto x = inputs.cast<Array<Scalar>>();
  if (x.ndim() < 1 || x.shape(0) < 1)
    throw std::invalid_argument("inputs must be an array [N, ...] of N >= 1 samples, not of shape " +
                                shape_of(x));
  const Index n = x.shape(0);
  Dataset<Scalar> d;
  d.inputs = ConstMatMap<Scalar>(x.data(), x.size() / n, n);
  if (targets.ndim() < 1 || targets.shape(0) != n)
    throw std::invalid_argument("targets must have one entry per sample: the inputs hold " +
                                std::to_string(n) + " samples but the targets have shape " +
                                shape_of(targets));
  if (model.file.likelihood == LikelihoodKind::categorical) {
    const auto labels = targets.cast<Array<int64_t>>();
    d.labels.assign(labels.data(), labels.data() + labels.size());
  } else {
    const auto values = targets.cast<Array<Scalar>>();
    d.targets = ConstMatMap<Scalar>(values.data(), values.size() / n, n);
  }
  return d;
}

/// The flat parameters (float64, one per parameter of the model) in the given scalar.
template <typename Scalar>
Vec<Scalar> make_parameters(const Model& model, const Array<double>& parameters) {
  if (parameters.ndim() != 1)
    throw std::invalid_argument("the parameters must be one flat vector, not of shape " +
                                shape_of(parameters));
  model.network->check_params(parameters.shape(0));
  return ConstVecMap<double>(parameters.data(), parameters.shape(0)).template cast<Scalar>();
}

}  // namespace python
}  // namespace natgrad
