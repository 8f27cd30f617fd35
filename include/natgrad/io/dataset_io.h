/// \file dataset_io.h
/// \brief Datasets from safetensors (`inputs`, `targets`), MNIST-format IDX directories (gzip or plain), CSV, or
/// text (byte-level windows).
///
/// U8 pixels are scaled to [0, 1]. Every loader validates what it reads against the model: sample shape,
/// target kind and range, finiteness, and reports problems as std::invalid_argument("<path>: <problem>").
///
/// \code
/// auto data = natgrad::load_dataset<float>("/usr/share/datasets/fashion-mnist", {1, 28, 28},
///                                          natgrad::LikelihoodKind::categorical, 10);
/// \endcode
#pragma once

#include <natgrad/core/dataset.h>
#include <natgrad/likelihood/likelihood.h>

#include <cstdint>
#include <string>
#include <vector>

namespace natgrad {

enum class Split { train, test };

/// Loads `path` (a directory of IDX files, a .safetensors file or a .csv file). `max_samples` > 0 keeps
/// the first max_samples and is an error if the file has fewer. With `first` > 0 the samples start there:
/// [first, first + max_samples) (to the end if max_samples is 0), as a rank reads its share of a batch.
/// Only those samples are read and kept: safetensors and text are read at their offsets (the header, then
/// the rows), CSV and IDX files (gzip-compressed or plain) as a stream of which only the share is kept, so
/// reading costs the share's memory, not the file's. `num_outputs` is C, the outputs per
/// position; a model with a likelihood per position (output [T, C], `positions` = T) reads [N, T] class
/// indices (or [N, T, C] real targets) from safetensors. With `context` = T > 0 the file is read as text:
/// byte-level windows of T + 1 bytes, non-overlapping, inputs the first T bytes (token indices, vocabulary
/// 256) and targets the last T.
template <typename Scalar>
Dataset<Scalar> load_dataset(const std::string& path, const Shape& input_shape, LikelihoodKind likelihood,
                             Index num_outputs, Split split = Split::train, Index max_samples = 0,
                             Index positions = 1, Index context = 0, Index first = 0);

/// The number of samples `path` holds (windows of `context` + 1 bytes for text): from the header (IDX,
/// safetensors), the file's size (text), or the lines counted as a stream (CSV); the file is never held.
/// Throws std::invalid_argument("<path>: <problem>").
Index count_samples(const std::string& path, Split split = Split::train, Index context = 0);

/// Parses a decompressed IDX image of unsigned bytes with `expected_dims` dimensions: returns the data and
/// stores the dimensions in *dims. Throws std::invalid_argument("<label>: <problem>"). (The reader that
/// load_dataset streams an IDX file through, here on bytes in memory: exposed for fuzzing.)
std::vector<uint8_t> parse_idx(const std::vector<uint8_t>& bytes, int expected_dims, const std::string& label,
                               std::vector<uint32_t>* dims);

/// Parses CSV text: one sample a row, inputs then the target (categorical: one integer column; otherwise C
/// columns); a non-numeric first line is a header; empty lines are skipped. Throws
/// std::invalid_argument("<label>: <problem>") (a text without samples is one). (The reader load_dataset
/// streams a CSV file through, here on text in memory: exposed for fuzzing.)
template <typename Scalar>
Dataset<Scalar> parse_csv(const std::string& text, const Shape& input_shape, LikelihoodKind likelihood,
                          Index num_outputs, const std::string& label);

/// Writes a dataset as safetensors (`inputs` [N, ...input_shape], `targets` I64 [N] (or [N, T] with T labels
/// per sample) or [N, rows]).
template <typename Scalar>
void save_dataset(const std::string& path, const Dataset<Scalar>& data, const Shape& input_shape);

}  // namespace natgrad
