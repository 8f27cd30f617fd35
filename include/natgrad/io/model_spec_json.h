/// \file model_spec_json.h
/// \brief The model spec file (JSON): PyTorch module names and constructor keys (docs/formats.md).
///
/// \code
/// natgrad::ModelFile m = natgrad::read_model_spec("model.json");
/// natgrad::Network<float> model(m.spec);
/// \endcode
#pragma once

#include <natgrad/likelihood/likelihood.h>
#include <natgrad/model/layer_spec.h>

#include <string>

namespace natgrad {

/// The model spec format this build writes and the newest it reads. A file without "format_version" is
/// version 1 (chains); version 2 added graphs (`id`, `inputs`, `output`, `parameters`) and their layer
/// types. A higher version is refused as "written by a newer natgrad".
constexpr int kModelFormatVersion = 2;

struct ModelFile {
  ModelSpec spec;
  LikelihoodKind likelihood = LikelihoodKind::categorical;
};

/// Parses and validates a spec; unknown keys, types or likelihoods are errors. Also checks that the graph
/// is valid (no cycle, every input names a node, every node's output is used, shapes match). Throws std::invalid_argument("<label>: <problem>").
ModelFile parse_model_spec(const std::string& json_text, const std::string& label);
ModelFile read_model_spec(const std::string& path);
/// The JSON text of a spec (inverse of parse_model_spec).
std::string model_spec_to_json(const ModelFile& m);

}  // namespace natgrad
