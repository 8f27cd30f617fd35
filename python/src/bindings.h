// What the binding files share: the model as Python holds it, and each file's registration function.
#pragma once

#include <natgrad/io/model_spec_json.h>
#include <natgrad/model/network.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <vector>

namespace natgrad {
namespace python {

namespace py = pybind11;

/// A model as the package holds it: the spec and its own parameters and buffers, in double (a Fisher casts
/// them to its dtype). Immutable once made; Python shares it between Fishers.
struct Model {
  ModelFile file;
  std::string label;                               ///< where it came from, for messages
  std::shared_ptr<const Network<double>> network;  ///< the graph, for names, shapes and checks
  Vec<double> parameters;                          ///< flat, in PyTorch's model.parameters() order
  std::vector<std::vector<double>> buffers;        ///< per network->named_buffers(), in that order

  /// A network of the given scalar with this model's buffers set (a Fisher owns one).
  template <typename Scalar>
  std::unique_ptr<Network<Scalar>> build() const {
    auto net = std::make_unique<Network<Scalar>>(file.spec);
    for (std::size_t k = 0; k < buffers.size(); ++k) {
      const std::vector<Scalar> v(buffers[k].begin(), buffers[k].end());
      net->set_buffer(k, v.data());
    }
    return net;
  }
};

void bind_model(py::module_& m);
void bind_fisher(py::module_& m);
void bind_optimizers(py::module_& m);

}  // namespace python
}  // namespace natgrad
