// natgrad train's checkpoints on the command line: the settings a checkpoint records (the options that change
// the trained parameters) and its fingerprints of the model and the data, their comparison on --resume, and
// the log a resumed run continues.
#pragma once

#include "options.h"

#include <natgrad/core/dataset.h>
#include <natgrad/io/model_spec_json.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace natgrad {
namespace cli {

/// The options that change the result, as (key, text) with numbers in 17 significant digits, `optimizer` first;
/// the optimizer's own options only for it. (An option of train that changes the trained parameters belongs here.)
std::vector<std::pair<std::string, std::string>> train_settings(const Args& a, Index params, Index samples);

/// What a resumed run must share with the checkpoint's beyond its options, as (key, 8 hex digits):
/// `model_crc32`, the CRC-32 of the model's canonical description (model_spec_to_json of the parsed spec, the
/// likelihood included and the layers' `origin` notes left out: whitespace, key order and spelled-out defaults
/// do not count, another activation, layer option or likelihood does), and `data_crc32`, the CRC-32 of the
/// training split as loaded (its inputs, then its class labels or targets, in the run's dtype).
template <typename Scalar>
std::vector<std::pair<std::string, std::string>> train_fingerprints(const ModelFile& model,
                                                                    const Dataset<Scalar>& data);

/// --resume: throws std::invalid_argument, one line on the first of this run's pairs `now` (train_settings',
/// train_fingerprints') whose value is not the one in the checkpoint's metadata `saved`: for a setting its
/// old and new value; for a fingerprint which of the model and the training data differs and what to do, or,
/// when the checkpoint records none, that it predates them.
void check_resume(const std::string& path, const std::map<std::string, std::string>& saved,
                  const std::vector<std::pair<std::string, std::string>>& now);

/// The log a run resumed at `steps` starts from: the rows of the existing log at `path` up to step `steps` (a
/// run that went past the checkpoint left more: they are dropped), or the header alone when there is no such file. Throws
/// std::invalid_argument naming --log when the file is not a train log (its first line is not `header`).
std::string log_before(const std::string& path, Index steps, const std::string& header);

}  // namespace cli
}  // namespace natgrad
