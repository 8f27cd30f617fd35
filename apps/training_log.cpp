#include "training_log.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>

namespace natgrad {
namespace cli {

namespace {

constexpr int kFields = 10;
const char* const kColumns[kFields] = {"kind", "step",    "epoch",         "time_s",    "loss",
                                       "lr",   "damping", "cg_iterations", "test_loss", "test_accuracy"};

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> out;
  std::size_t begin = 0;
  while (true) {
    const std::size_t comma = line.find(',', begin);
    out.push_back(line.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin));
    if (comma == std::string::npos) return out;
    begin = comma + 1;
  }
}

struct Line {
  const std::string& name;
  long long number;
  // "<name>: line <number>" and `rest` (", column 3 (epoch): …", ": …" or " has …").
  [[noreturn]] void fail(const std::string& rest) const {
    throw std::invalid_argument(name + ": line " + std::to_string(number) + rest);
  }
  std::string where(int column) const {
    return ", column " + std::to_string(column + 1) + " (" + kColumns[column] + ")";
  }
};

// A field as strtod reads it, whole (no blanks around it); empty is NaN.
double number(const Line& at, const std::string& text, int column) {
  if (text.empty()) return std::numeric_limits<double>::quiet_NaN();
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (std::isspace(static_cast<unsigned char>(text.front())) || end != text.c_str() + text.size())
    at.fail(at.where(column) + ": \"" + text + "\" is not a number");
  return v;
}

Index whole(const Line& at, const std::string& text, int column) {
  if (text.empty()) at.fail(at.where(column) + " is empty; every row has one");
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (!std::isdigit(static_cast<unsigned char>(text.front())) || end != text.c_str() + text.size() ||
      errno == ERANGE)
    at.fail(at.where(column) + ": \"" + text + "\" is not a whole number >= 0");
  return static_cast<Index>(v);
}

}  // namespace

std::vector<TrainingLogRow> parse_training_log(const std::string& text, const std::string& name) {
  std::vector<TrainingLogRow> rows;
  std::istringstream in(text);
  std::string line;
  long long number_of_line = 0;
  long long blank = 0;  // the first empty line (allowed at the end only)
  while (std::getline(in, line)) {
    ++number_of_line;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // (a file that went through Windows)
    const Line at{name, number_of_line};
    if (number_of_line == 1) {
      if (line != kTrainingLogHeader)
        at.fail(": the header is not that of natgrad train's log (\"" + std::string(kTrainingLogHeader) +
                "\"); got \"" + line.substr(0, 120) + "\"");
      continue;
    }
    if (line.empty()) {
      if (blank == 0) blank = number_of_line;
      continue;
    }
    if (blank > 0) Line{name, blank}.fail(" is empty, and rows follow it");
    const std::vector<std::string> f = split(line);
    if (static_cast<int>(f.size()) != kFields)
      at.fail(" has " + std::to_string(f.size()) + " fields; the log's rows have " + std::to_string(kFields));
    TrainingLogRow r;
    if (f[0] == "eval")
      r.eval = true;
    else if (f[0] != "step")
      at.fail(", column 1 (kind): \"" + f[0] + "\" is neither step nor eval");
    r.step = whole(at, f[1], 1);
    r.epoch = whole(at, f[2], 2);
    r.time_s = number(at, f[3], 3);
    if (std::isnan(r.time_s)) at.fail(at.where(3) + " is empty; every row has one");
    r.loss = number(at, f[4], 4);
    for (int c = 5; c < 8; ++c) number(at, f[c], c);  // (checked; a picture does not show them)
    r.test_loss = number(at, f[8], 8);
    r.test_accuracy = number(at, f[9], 9);
    rows.push_back(r);
  }
  if (number_of_line == 0)
    throw std::invalid_argument(name + ": is empty (no header; not a natgrad train log)");
  return rows;
}

std::vector<TrainingLogRow> read_training_log(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path + ": cannot open the log (" + std::strerror(errno) + ")");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw std::invalid_argument(path + ": read error");
  return parse_training_log(text.str(), path);
}

void CurveSeries::add(double e, double t, double v) {
  if (!std::isfinite(v) || !std::isfinite(t)) return;
  epoch.push_back(e);
  time_s.push_back(t);
  value.push_back(v);
}

TrainingCurve training_curve(const std::vector<TrainingLogRow>& rows, const std::string& label,
                             Index steps_per_epoch) {
  // Per epoch: its steps, their loss sum, its last step's time.
  struct Epoch {
    Index steps = 0;
    double loss_sum = 0, end_time = 0;
  };
  std::map<Index, Epoch> epochs;
  Index completed = 0;  // epochs known to have ended: a later epoch's step, or an evaluation counting them
  for (const TrainingLogRow& r : rows) {
    if (r.eval) {
      completed = std::max(completed, r.epoch);
      continue;
    }
    Epoch& e = epochs[r.epoch];
    ++e.steps;
    e.loss_sum += r.loss;
    e.end_time = r.time_s;
    completed = std::max(completed, r.epoch - 1);
  }
  Index per_epoch = steps_per_epoch;
  // A resumed log may begin, and a stopped one end, within an epoch: the longest completed epoch's length.
  if (per_epoch <= 0)
    for (const auto& [k, e] : epochs)
      if (k <= completed) per_epoch = std::max(per_epoch, e.steps);
  TrainingCurve c;
  c.label = label;
  c.epochs_known = per_epoch > 0;
  if (per_epoch <= 0) per_epoch = 1;  // (the positions in epochs are not drawn)
  for (const TrainingLogRow& r : rows) {
    const double x = double(r.step) / double(per_epoch);
    if (r.eval) {
      c.test_loss.add(x, r.time_s, r.test_loss);
      c.test_accuracy.add(x, r.time_s, r.test_accuracy);
    } else {
      c.step_loss.add(x, r.time_s, r.loss);
    }
  }
  for (const auto& [k, e] : epochs)
    if (k <= completed) c.epoch_loss.add(double(k), e.end_time, e.loss_sum / double(e.steps));
  return c;
}

}  // namespace cli
}  // namespace natgrad
