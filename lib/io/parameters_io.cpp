#include <natgrad/io/parameters_io.h>

#include <algorithm>

#include <cmath>
#include <stdexcept>
#include "core/fail.h"

namespace natgrad {

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  Shape t(s.begin(), s.end());
  return shape_to_string(t);
}
}  // namespace

template <typename Scalar>
Vec<Scalar> load_parameters(const std::string& path, const Network<Scalar>& model, std::string* conversion) {
  const SafetensorsFile f = SafetensorsFile::read(path);
  Vec<Scalar> theta(model.num_params());
  const DType own = sizeof(Scalar) == 4 ? DType::F32 : DType::F64;
  std::vector<std::string> converted;  // the stored types that differ from the run's, in first-seen order
  for (const NamedParam& p : model.named_params()) {
    if (!f.contains(p.name)) {
      std::string present;
      for (const std::string& n : f.names()) present += (present.empty() ? "" : ", ") + n;
      detail::fail(path + ": missing tensor \"" + p.name + "\" of shape " + shape_to_string(p.shape) +
                                  " (the file holds: " + (present.empty() ? "no tensors" : present) + ")");
    }
    const TensorInfo& t = f.info(p.name);
    if (t.dtype == DType::I64 || t.dtype == DType::I32 || t.dtype == DType::U8 || t.dtype == DType::BOOL)
      detail::fail(path + ": tensor \"" + p.name + "\" has dtype " + to_string(t.dtype) +
                                  "; parameters must be F32, F64, F16 or BF16");
    if (Shape(t.shape.begin(), t.shape.end()) != p.shape)
      detail::fail(path + ": tensor \"" + p.name + "\" has shape " + shape_str(t.shape) +
                                  " but the model expects " + shape_to_string(p.shape));
    const std::vector<Scalar> v = f.get<Scalar>(p.name);
    for (std::size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i]))
        detail::fail(path + ": tensor \"" + p.name + "\" has a non-finite value (" + std::to_string(double(v[i])) +
                                    ") at flat index " + std::to_string(i));
    std::copy(v.begin(), v.end(), theta.data() + p.offset);
    if (t.dtype != own && std::find(converted.begin(), converted.end(), to_string(t.dtype)) == converted.end())
      converted.push_back(to_string(t.dtype));
  }
  if (conversion) {
    conversion->clear();
    for (const std::string& d : converted) *conversion += (conversion->empty() ? "" : ", ") + d;
    if (!conversion->empty()) *conversion = "converted " + *conversion + " to " + (own == DType::F32 ? "float32" : "float64");
  }
  for (const auto& [alias, name] : model.tied_names()) {
    // A state_dict holds a tied tensor under each module's name ("head.weight" beside "tok.weight"): the
    // alias is accepted when it is the same tensor.
    if (!f.contains(alias)) continue;
    const NamedParam* p = nullptr;
    for (const NamedParam& q : model.named_params())
      if (q.name == name) p = &q;
    const std::vector<Scalar> v = f.get<Scalar>(alias);
    const TensorInfo& t = f.info(alias);
    if (Shape(t.shape.begin(), t.shape.end()) != p->shape ||
        !std::equal(v.begin(), v.end(), theta.data() + p->offset))
      detail::fail(path + ": tensor \"" + alias + "\" is tied to \"" + name + "\" in the model but holds different values");
  }
  for (const std::string& name : f.names()) {
    // A state_dict also holds the buffers: load_buffers reads those, a vector ignores them.
    bool known = false;
    for (const auto& tied : model.tied_names()) known = known || tied.first == name;
    for (const NamedParam& p : model.named_params()) known = known || p.name == name;
    for (const NamedBuffer& b : model.named_buffers()) known = known || b.name == name;
    for (const std::string& b : model.ignored_buffers()) known = known || b == name;
    if (!known) {
      std::string expected;
      for (const NamedParam& p : model.named_params()) expected += (expected.empty() ? "" : ", ") + p.name;
      std::string buffers;
      for (const NamedBuffer& b : model.named_buffers()) buffers += (buffers.empty() ? "" : ", ") + b.name;
      detail::fail(path + ": unexpected tensor \"" + name + "\" (the model's parameters are " + expected +
                   (buffers.empty() ? "" : "; its buffers are " + buffers) + ")");
    }
  }
  return theta;
}

template <typename Scalar>
void load_buffers(const std::string& path, Network<Scalar>& model) {
  if (model.named_buffers().empty()) return;
  const SafetensorsFile f = SafetensorsFile::read(path);
  for (std::size_t k = 0; k < model.named_buffers().size(); ++k) {
    const NamedBuffer& b = model.named_buffers()[k];
    if (!f.contains(b.name))
      detail::fail(path + ": missing buffer \"" + b.name + "\" of shape " + shape_to_string(b.shape) +
                   " (export the module's state_dict(), which holds it)");
    const TensorInfo& t = f.info(b.name);
    if (Shape(t.shape.begin(), t.shape.end()) != b.shape)
      detail::fail(path + ": buffer \"" + b.name + "\" has shape " + shape_str(t.shape) + " but the model expects " +
                   shape_to_string(b.shape));
    const std::vector<Scalar> v = f.get<Scalar>(b.name);
    try {
      model.set_buffer(k, v.data());
    } catch (const std::invalid_argument& e) {
      detail::fail(path + ": buffer " + e.what());
    }
  }
}

template <typename Scalar>
void save_parameters(const std::string& path, const Network<Scalar>& model, const Vec<Scalar>& v, DType dtype,
                     const std::map<std::string, std::string>& metadata) {
  model.check_params(v.size());
  if (dtype != DType::F32 && dtype != DType::F64) detail::fail(path + ": can only write F32 or F64");
  const Vec<float> vf = v.template cast<float>();
  const Vec<double> vd = v.template cast<double>();
  std::vector<TensorView> views;
  for (const NamedParam& p : model.named_params()) {
    const void* data = dtype == DType::F32 ? static_cast<const void*>(vf.data() + p.offset)
                                           : static_cast<const void*>(vd.data() + p.offset);
    views.push_back({p.name, dtype, std::vector<int64_t>(p.shape.begin(), p.shape.end()), data});
  }
  write_safetensors(path, views, metadata);
}

template <typename Scalar>
void save_state_dict(const std::string& path, const Network<Scalar>& model, const Vec<Scalar>& v, DType dtype,
                     const std::map<std::string, std::string>& metadata) {
  model.check_params(v.size());
  if (dtype != DType::F32 && dtype != DType::F64) detail::fail(path + ": can only write F32 or F64");
  // The parameters and then the buffers, each in `dtype`, all held until the write.
  const std::size_t B = model.named_buffers().size();
  std::vector<float> f(v.data(), v.data() + v.size());
  std::vector<double> d(v.data(), v.data() + v.size());
  std::vector<std::size_t> at(B);
  for (std::size_t k = 0; k < B; ++k) {
    const std::vector<Scalar> values = model.buffer(k);
    at[k] = f.size();
    f.insert(f.end(), values.begin(), values.end());
    d.insert(d.end(), values.begin(), values.end());
  }
  auto data = [&](std::size_t offset) {
    return dtype == DType::F32 ? static_cast<const void*>(f.data() + offset)
                               : static_cast<const void*>(d.data() + offset);
  };
  std::vector<TensorView> views;
  for (const NamedParam& p : model.named_params())
    views.push_back({p.name, dtype, std::vector<int64_t>(p.shape.begin(), p.shape.end()), data(std::size_t(p.offset))});
  for (const auto& [alias, name] : model.tied_names())  // a tied tensor under each module's name, as PyTorch's
    for (const NamedParam& p : model.named_params())
      if (p.name == name)
        views.push_back({alias, dtype, std::vector<int64_t>(p.shape.begin(), p.shape.end()), data(std::size_t(p.offset))});
  for (std::size_t k = 0; k < B; ++k) {
    const NamedBuffer& b = model.named_buffers()[k];
    views.push_back({b.name, dtype, std::vector<int64_t>(b.shape.begin(), b.shape.end()), data(at[k])});
  }
  write_safetensors(path, views, metadata);
}

template <typename Scalar>
void save_parameter_stack(const std::string& path, const Network<Scalar>& model, const Mat<double>& V, DType dtype,
                          const std::map<std::string, std::string>& metadata) {
  model.check_params(V.rows());
  if (dtype != DType::F32 && dtype != DType::F64) detail::fail(path + ": can only write F32 or F64");
  const Index K = V.cols();
  std::vector<std::vector<double>> d64;
  std::vector<std::vector<float>> d32;
  std::vector<TensorView> views;
  for (const NamedParam& p : model.named_params()) {
    std::vector<double> block(static_cast<std::size_t>(K * p.size));
    for (Index i = 0; i < K; ++i)
      for (Index e = 0; e < p.size; ++e) block[static_cast<std::size_t>(i * p.size + e)] = V(p.offset + e, i);
    std::vector<int64_t> shape{K};
    shape.insert(shape.end(), p.shape.begin(), p.shape.end());
    if (dtype == DType::F64) {
      d64.push_back(std::move(block));
      views.push_back({p.name, dtype, shape, d64.back().data()});
    } else {
      d32.emplace_back(block.begin(), block.end());
      views.push_back({p.name, dtype, shape, d32.back().data()});
    }
  }
  write_safetensors(path, views, metadata);
}

template void save_parameter_stack<float>(const std::string&, const Network<float>&, const Mat<double>&, DType,
                                          const std::map<std::string, std::string>&);
template void save_parameter_stack<double>(const std::string&, const Network<double>&, const Mat<double>&, DType,
                                           const std::map<std::string, std::string>&);
template Vec<float> load_parameters<float>(const std::string&, const Network<float>&, std::string*);
template Vec<double> load_parameters<double>(const std::string&, const Network<double>&, std::string*);
template void load_buffers<float>(const std::string&, Network<float>&);
template void load_buffers<double>(const std::string&, Network<double>&);
template void save_parameters<float>(const std::string&, const Network<float>&, const Vec<float>&, DType,
                                     const std::map<std::string, std::string>&);
template void save_parameters<double>(const std::string&, const Network<double>&, const Vec<double>&, DType,
                                      const std::map<std::string, std::string>&);
template void save_state_dict<float>(const std::string&, const Network<float>&, const Vec<float>&, DType,
                                     const std::map<std::string, std::string>&);
template void save_state_dict<double>(const std::string&, const Network<double>&, const Vec<double>&, DType,
                                      const std::map<std::string, std::string>&);

}  // namespace natgrad
