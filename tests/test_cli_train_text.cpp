// natgrad train on text (--context T): a byte-level model (an embedding and a linear head, a prediction at
// each of T positions) on windows of T + 1 bytes. The held-out tail is the text's last windows and is never
// trained on (the same run on the text cut in two files, --test-data the tail, writes the same bytes); --holdout
// sets how many; training lowers the held-out loss below its value at the initial parameters (measured by
// `natgrad solve` on the tail) with adam, kfac and natgrad; a checkpoint records the holdout; bad input ends
// with one line and writes nothing.
#include "cli_fixture.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

using namespace natgrad;
using namespace natgrad::test::cli_fixture;

namespace {

constexpr Index kContext = 8, kWindows = 30;  // the corpus: 30 windows of 9 bytes and 5 bytes left over
constexpr std::size_t kWindow = kContext + 1;

class TrainText : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::ofstream(p("lm.json")) << R"({"input_shape": [8], "likelihood": "categorical", "layers": [
      {"type": "embedding", "name": "tok", "num_embeddings": 256, "embedding_dim": 4},
      {"type": "linear", "name": "head", "in_features": 4, "out_features": 256}]})";
    // A transformer block on the same embedding: layer norm, self-attention (2 heads, unmasked), a residual.
    std::ofstream(p("block.json")) << R"({"input_shape": [8], "likelihood": "categorical", "layers": [
      {"type": "embedding", "name": "tok", "id": "tok", "inputs": ["input"], "num_embeddings": 256,
       "embedding_dim": 8},
      {"type": "layer_norm", "name": "ln", "id": "ln", "inputs": ["tok"], "normalized_shape": [8]},
      {"type": "multihead_attention", "name": "attn", "id": "attn", "inputs": ["ln"], "embed_dim": 8,
       "num_heads": 2},
      {"type": "add", "id": "res", "inputs": ["attn", "tok"]},
      {"type": "linear", "name": "head", "id": "head", "inputs": ["res"], "in_features": 8,
       "out_features": 256}]})";
    std::string text;
    while (text.size() < kWindows * kWindow + 5) text += "the cat sat on the mat, the dog sat on the log. ";
    text.resize(kWindows * kWindow + 5);
    std::ofstream(p("corpus.txt"), std::ios::binary) << text;
    // The corpus cut where --holdout 0.1 cuts it: the first 27 windows, then the last 3 (and the 5 bytes).
    std::ofstream(p("head.txt"), std::ios::binary) << text.substr(0, 27 * kWindow);
    std::ofstream(p("tail.txt"), std::ios::binary) << text.substr(27 * kWindow);
    std::ofstream(p("one_window.txt"), std::ios::binary) << text.substr(0, kWindow + 3);
    std::string hundred;  // 100 windows
    while (hundred.size() < 100 * kWindow) hundred += text;
    std::ofstream(p("hundred.txt"), std::ios::binary) << hundred.substr(0, 100 * kWindow);
  }
  const std::string lm = "train --model " + p("lm.json") + " --context 8 --seed 3 --dtype float64 ";
  static nlohmann::json report(const std::string& name) { return nlohmann::json::parse(slurp(p(name))); }
};

// One line on stderr, naming what is wrong.
void expect_one_line(const Result& r, const std::string& text) {
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.err.find(text), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST_F(TrainText, TheHeldOutTailIsTheLastWindowsAndIsNotTrainedOn) {
  const Result a = run(lm + "--data " + p("corpus.txt") + " --optimizer adam --lr 0.05 --epochs 2 --batch 8 --report " +
                       p("held.json") + " --save " + p("held.safetensors"));
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_NE(a.out.find("corpus.txt (27 windows of 9 bytes), test " + p("corpus.txt") +
                       "'s held-out tail, --holdout 0.1 (3 windows)"),
            std::string::npos)
      << a.out;
  const nlohmann::json held = report("held.json");
  EXPECT_EQ(held["samples"].get<Index>(), 27);  // ⌊0.1 · 30⌋ = 3 windows held out
  EXPECT_EQ(held["test_samples"].get<Index>(), 3);
  EXPECT_EQ(held["context"].get<Index>(), kContext);
  // The same run with the text cut in two: every number and every saved byte agree.
  const Result b = run(lm + "--data " + p("head.txt") + " --test-data " + p("tail.txt") +
                       " --optimizer adam --lr 0.05 --epochs 2 --batch 8 --report " + p("split.json") + " --save " +
                       p("split.safetensors"));
  ASSERT_EQ(b.code, 0) << b.err;
  const nlohmann::json split = report("split.json");
  EXPECT_EQ(split["samples"].get<Index>(), 27);
  EXPECT_EQ(split["test_samples"].get<Index>(), 3);
  ASSERT_EQ(split["epochs"].size(), 2u);
  for (std::size_t e = 0; e < 2; ++e) {
    EXPECT_EQ(split["epochs"][e]["train_loss"], held["epochs"][e]["train_loss"]) << e;
    EXPECT_EQ(split["epochs"][e]["test_loss"], held["epochs"][e]["test_loss"]) << e;
    EXPECT_EQ(split["epochs"][e]["test_accuracy"], held["epochs"][e]["test_accuracy"]) << e;
  }
  EXPECT_EQ(slurp(p("split.safetensors")), slurp(p("held.safetensors")));
  // Accuracy counts positions: 3 windows of 8 predictions.
  const double accuracy = held["test_accuracy"].get<double>();
  EXPECT_NEAR(accuracy * 24, std::round(accuracy * 24), 1e-9) << accuracy;

  // --holdout F holds out ⌊F·N⌋ windows, at least one; 0 none (and no evaluation).
  const std::vector<std::pair<std::string, Index>> fractions = {{"0.25", 7}, {"0.01", 1}, {"0.5", 15}, {"0", 0}};
  for (const auto& [fraction, kept] : fractions) {
    const Result r = run(lm + "--data " + p("corpus.txt") + " --optimizer adam --epochs 1 --holdout " + fraction +
                         " --report " + p("h.json"));
    ASSERT_EQ(r.code, 0) << r.err;
    const nlohmann::json h = report("h.json");
    EXPECT_EQ(h["samples"].get<Index>(), kWindows - kept) << fraction;
    EXPECT_EQ(h["test_samples"].get<Index>(), kept) << fraction;
    EXPECT_EQ(h["test_loss"].is_null(), kept == 0) << fraction;
  }
  // 0.29 · 100 is 28.999999999999996 in floating point; the fraction holds out 29 windows all the same.
  const Result r = run(lm + "--data " + p("hundred.txt") + " --optimizer adam --epochs 1 --holdout 0.29 --report " +
                       p("h.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(report("h.json")["test_samples"].get<Index>(), 29);
  EXPECT_EQ(report("h.json")["samples"].get<Index>(), 71);
}

// Each optimizer lowers the held-out loss well below its value at the initial parameters (the loss `natgrad
// solve` reports on the tail's windows at the same seed's initialization, about ln 256).
// Every optimizer lowers the held-out loss of the bigram model and of the transformer block by a nat.
TEST_F(TrainText, TrainingLowersTheHeldOutLoss) {
  for (const std::string model : {"lm.json", "block.json"}) {
    const Result s = run("solve --model " + p(model) + " --data " + p("tail.txt") +
                         " --context 8 --seed 3 --dtype float64 --report " + p("initial.json"));
    ASSERT_EQ(s.code, 0) << model << ": " << s.err;
    const double initial = report("initial.json")["loss"].get<double>();
    EXPECT_NEAR(initial, std::log(256.0), 1.0) << model;
    for (const std::string opt : {"adam --lr 0.05", "kfac", "natgrad --solver cg --cg-max-iters 10"}) {
      const Result r = run("train --model " + p(model) + " --context 8 --seed 3 --dtype float64 --data " +
                           p("corpus.txt") + " --batch 16 --epochs 3 --optimizer " + opt + " --report " + p("t.json"));
      ASSERT_EQ(r.code, 0) << model << ", " << opt << ": " << r.err;
      const nlohmann::json t = report("t.json");
      ASSERT_EQ(t["epochs"].size(), 3u) << model << ", " << opt;
      const double final_loss = t["test_loss"].get<double>();
      EXPECT_LT(final_loss, initial - 1.0) << model << ", " << opt << " from " << initial;
      EXPECT_GT(t["test_accuracy"].get<double>(), 0.0) << model << ", " << opt;
    }
  }
}

// The holdout changes which windows train: a resumed run must keep it.
TEST_F(TrainText, ACheckpointKeepsTheHoldout) {
  const std::string base = lm + "--data " + p("corpus.txt") + " --optimizer adam --checkpoint " + p("c.safetensors");
  ASSERT_EQ(run(base + " --epochs 1").code, 0);
  // 0.11 holds out ⌊3.3⌋ = 3 windows too: the same sample count, another setting.
  expect_one_line(run(base + " --epochs 2 --holdout 0.11 --resume " + p("c.safetensors")),
                  "--holdout differs: the checkpoint's 0.10000000000000001, this run's 0.11 ");
  const Result r = run(base + " --epochs 2 --resume " + p("c.safetensors") + " --report " + p("resumed.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(report("resumed.json")["test_samples"].get<Index>(), 3);
}

TEST_F(TrainText, BadInputEndsWithOneLine) {
  const std::string out = " --save " + p("never.safetensors");
  expect_one_line(run(lm + "--data " + p("corpus.txt") + " --holdout 1" + out), "--holdout must be in [0, 1)");
  expect_one_line(run(lm + "--data " + p("corpus.txt") + " --holdout -0.1" + out), "--holdout must be in [0, 1)");
  expect_one_line(run(lm + "--data " + p("corpus.txt") + " --holdout 0.2 --test-data " + p("tail.txt") + out),
                  "--holdout and --test-data");
  expect_one_line(run("train --model " + p("lm.json") + " --data " + p("corpus.txt") + " --context 0" + out),
                  "--context must be >= 1");
  // The model predicts 8 positions; a window of 4 does not fit it.
  expect_one_line(run("train --model " + p("lm.json") + " --data " + p("corpus.txt") + " --context 4" + out),
                  "--context 4 needs a model whose output is [4, 256]");
  expect_one_line(run("train --model " + p("lm.json") + " --data " + p("corpus.txt") + " --holdout 0.2" + out),
                  "--holdout is for text (--context T)");
  // One window, which the holdout takes: nothing is left to train on.
  expect_one_line(run(lm + "--data " + p("one_window.txt") + out),
                  "one_window.txt: 1 window of --context + 1 = 9 bytes, and --holdout 0.1 keeps it for "
                  "evaluation: none is left to train on");
  // Shorter than a window.
  std::ofstream(p("tiny.txt")) << "tiny";
  expect_one_line(run(lm + "--data " + p("tiny.txt") + out), "tiny.txt: holds 4 bytes, shorter than one window");
  // A test text too short for a window.
  expect_one_line(run(lm + "--data " + p("corpus.txt") + " --test-data " + p("tiny.txt") + out),
                  "tiny.txt: holds 4 bytes");
  EXPECT_FALSE(exists(p("never.safetensors")));
}

}  // namespace
