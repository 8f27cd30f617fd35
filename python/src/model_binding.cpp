// natgrad._core.Model: a model spec with its parameters and buffers, read from files (Model.load) or handed
// over in memory by the PyTorch tracer (Model.from_torch), never through a file.
#include <natgrad/io/parameters_io.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "bindings.h"

namespace natgrad {
namespace python {
namespace {

using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

std::shared_ptr<Model> load_model(const std::string& spec_path, const std::string& weights_path) {
  auto m = std::make_shared<Model>();
  m->file = read_model_spec(spec_path);
  m->label = spec_path;
  auto net = std::make_shared<Network<double>>(m->file.spec);
  m->parameters = load_parameters<double>(weights_path, *net);
  load_buffers<double>(weights_path, *net);
  for (std::size_t k = 0; k < net->named_buffers().size(); ++k) m->buffers.push_back(net->buffer(k));
  m->network = std::move(net);
  return m;
}

// The tracer's spec (JSON text), the flat parameters in model.parameters() order and the buffers by their
// state_dict names.
std::shared_ptr<Model> model_from_spec(const std::string& spec_json, const std::string& label,
                                       const DoubleArray& parameters, const py::dict& buffers) {
  auto m = std::make_shared<Model>();
  m->file = parse_model_spec(spec_json, label);
  m->label = label;
  auto net = std::make_shared<Network<double>>(m->file.spec);
  if (parameters.ndim() != 1)
    throw std::invalid_argument(label + ": the parameters must be one flat vector, not " +
                                std::to_string(parameters.ndim()) + "-dimensional");
  net->check_params(parameters.shape(0));
  m->parameters = ConstVecMap<double>(parameters.data(), parameters.shape(0));
  for (std::size_t k = 0; k < net->named_buffers().size(); ++k) {
    const NamedBuffer& b = net->named_buffers()[k];
    if (!buffers.contains(b.name))
      throw std::invalid_argument(label + ": missing buffer \"" + b.name + "\" of shape " +
                                  shape_to_string(b.shape));
    const auto values = buffers[b.name.c_str()].cast<DoubleArray>();
    if (values.size() != shape_size(b.shape))
      throw std::invalid_argument(label + ": buffer \"" + b.name + "\" has " + std::to_string(values.size()) +
                                  " values but the model expects shape " + shape_to_string(b.shape));
    net->set_buffer(k, values.data());  // (the layer's own checks: a negative running variance)
    m->buffers.emplace_back(values.data(), values.data() + values.size());
  }
  m->network = std::move(net);
  return m;
}

py::list shape_list(const Shape& s) {
  py::list l;
  for (Index d : s) l.append(d);
  return l;
}

}  // namespace

void bind_model(py::module_& m) {
  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def_static("load", &load_model, py::arg("model_json"), py::arg("weights"),
                  py::call_guard<py::gil_scoped_release>())
      .def_static("from_spec", &model_from_spec, py::arg("spec_json"), py::arg("label"),
                  py::arg("parameters"), py::arg("buffers"))
      .def_property_readonly("label", [](const Model& x) { return x.label; })
      .def_property_readonly("num_params", [](const Model& x) { return x.network->num_params(); })
      .def_property_readonly("input_shape",
                             [](const Model& x) { return shape_list(x.file.spec.input_shape); })
      .def_property_readonly("output_shape",
                             [](const Model& x) { return shape_list(x.network->output_shape()); })
      .def_property_readonly("likelihood",
                             [](const Model& x) { return std::string(to_string(x.file.likelihood)); })
      .def_property_readonly("spec_json", [](const Model& x) { return model_spec_to_json(x.file); })
      .def_property_readonly(
          "parameter_names",
          [](const Model& x) {
            py::list l;
            for (const NamedParam& p : x.network->named_params())
              l.append(py::make_tuple(p.name, shape_list(p.shape), p.offset, p.size));
            return l;
          },
          "(name, shape, offset, size) of every parameter tensor, in flat-vector order")
      .def_property_readonly("parameters", [](const Model& x) {
        return py::array_t<double>(x.parameters.size(),
                                   x.parameters.data());  // a copy: the model stays immutable
      });
}

}  // namespace python
}  // namespace natgrad
