// Checkpoints and --resume (issue 27): a run stopped at any step boundary — by --max-time, SIGINT or SIGTERM —
// and resumed from its checkpoint writes with --save the bytes of the run that was never stopped, for Adam, SGD
// with momentum and the natural gradient with Monte-Carlo curvature (whose draws are keyed by the step) and the
// Levenberg–Marquardt damping; its log holds every step once; a resume whose settings, model or file do not fit
// (another activation of the same shapes, other training samples as many: the model's and the data's CRC-32s)
// ends with one line and overwrites nothing; so does a test split of another shape. Also the library: the
// trainer's start point and the checkpoint file's round trip (buffers included).
#include "cli_fixture.h"

#include <natgrad/core/threads.h>
#include <natgrad/model/initialization.h>
#include <natgrad/training/checkpoint.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <limits>
#include <csignal>
#include <fcntl.h>
#include <sstream>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;

namespace {

// --- the library ---------------------------------------------------------------------------------------------

// A run of 3 epochs of 5 steps stopped before step k (stop_requested), then resumed from the summary's progress
// with the optimizer's state() moved into a new optimizer: θ, every epoch's train loss and the step count are
// those of the run that never stopped, for every k (inside epochs and at their boundaries).
TEST(TrainResume, TheTrainerContinuesFromAnyStepBoundaryBitForBit) {
  set_num_threads(1);  // (tiny steps: threads would only wait for each other on a busy machine)
  Network<double> model(mlp_spec(4, 5, 3));
  const Dataset<double> data = random_dataset(model, 37, LikelihoodKind::categorical, 3);
  const Vec<double> theta0 = init_parameters(model, 11);
  TrainOptions o;
  o.epochs = 3;
  o.batch = 8;  // 5 steps per epoch, the last of 5 samples
  o.seed = 9;
  Vec<double> full = theta0;
  AdamOptimizer<double> adam(model.num_params(), {0.02});
  TrainOptions each = o;
  std::vector<std::pair<Index, Index>> ends;  // (steps, epochs) at each epoch's end
  each.on_epoch_end = [&](const TrainProgress& at) {
    ends.push_back({at.steps, at.epochs});
    EXPECT_EQ(at.epoch_samples, 0);
    EXPECT_EQ(Index(at.per_epoch.size()), at.epochs);
  };
  const TrainSummary ref = train<double>(model, LikelihoodKind::categorical, full, data, nullptr, adam, each);
  ASSERT_EQ(ref.steps, 15);
  EXPECT_EQ(ends, (std::vector<std::pair<Index, Index>>{{5, 1}, {10, 2}, {15, 3}}));
  for (Index k : {1, 4, 5, 6, 10, 14}) {
    Vec<double> theta = theta0;
    AdamOptimizer<double> first(model.num_params(), {0.02});
    TrainOptions stop = o;
    Index polls = 0;
    stop.stop_requested = [&] { return polls++ == k; };
    const TrainSummary a = train<double>(model, LikelihoodKind::categorical, theta, data, nullptr, first, stop);
    ASSERT_TRUE(a.stopped);
    ASSERT_EQ(a.progress.steps, k);
    EXPECT_EQ(a.progress.epochs, k / 5);
    AdamOptimizer<double> second(model.num_params(), {0.02});
    second.load_state(first.state());
    TrainOptions resume = o;
    resume.start = a.progress;
    const TrainSummary b = train<double>(model, LikelihoodKind::categorical, theta, data, nullptr, second, resume);
    EXPECT_EQ(b.steps, 15);
    EXPECT_EQ(Index(b.records.size()), (15 - k) + (3 - k / 5)) << "the resumed run's own steps and evaluations";
    EXPECT_TRUE(theta == full) << "stopped before step " << k;
    ASSERT_EQ(b.per_epoch.size(), 3u);
    for (std::size_t e = 0; e < 3; ++e) EXPECT_EQ(b.per_epoch[e].train_loss, ref.per_epoch[e].train_loss) << e;
  }
  // A start past the total, or one that is not a step of this schedule, is refused.
  TrainOptions bad = o;
  bad.start.steps = 15;
  bad.start.epochs = 3;
  bad.start.per_epoch.resize(3);
  Vec<double> t = theta0;
  EXPECT_THROW(train<double>(model, LikelihoodKind::categorical, t, data, nullptr, adam, bad), std::invalid_argument);
}

// The file keeps every bit: parameters, batch norm's running statistics (set away from their defaults), the
// optimizer's vectors and scalars (the natural gradient's empty direction before its first step too), the
// progress with NaN test losses, and the settings.
TEST(TrainResume, ACheckpointRoundTripsEveryBit) {
  const std::string d = make_temp_dir("natgrad_ckpt") + "/";
  Network<float> model(resnet_spec(3));
  ASSERT_FALSE(model.named_buffers().empty());
  for (std::size_t k = 0; k < model.named_buffers().size(); ++k) {
    std::vector<float> v(static_cast<std::size_t>(shape_size(model.named_buffers()[k].shape)));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.25f + float(k) + 0.125f * float(i);
    model.set_buffer(k, v.data());
  }
  const Vec<float> theta = init_parameters(model, 2);
  SgdOptimizer<float> sgd(model.num_params(), {0.1, 0.9});
  Vec<float> moved = theta;
  sgd.update(moved, Vec<float>(random_vec<float>(model.num_params(), 3)));
  TrainProgress p;
  p.steps = 7;
  p.epochs = 1;
  p.time_s = 0.1 + 0.2;  // (not a short decimal: 17 digits)
  p.epoch_loss_sum = 1.0 / 3.0;
  p.epoch_samples = 24;
  p.epoch_cg_sum = 17;
  p.epoch_steps = 3;
  p.epoch_damping = 0.1 * 3;
  EpochSummary e;
  e.epoch = 1;
  e.train_loss = 2.0 / 3.0;
  e.time_s = 0.125;
  e.damping = 1.0 / 7.0;
  e.cg_iterations = 11.0 / 3.0;
  p.per_epoch = {e};
  save_checkpoint(d + "c.safetensors", model, moved, sgd, p, {{"batch", "8"}, {"seed", "5"}});

  Network<float> fresh(resnet_spec(3));
  const Checkpoint<float> c = load_checkpoint(d + "c.safetensors", fresh);
  EXPECT_TRUE(c.theta == moved);
  ASSERT_EQ(c.buffers.size(), model.named_buffers().size());
  for (std::size_t k = 0; k < c.buffers.size(); ++k) EXPECT_EQ(c.buffers[k], model.buffer(k)) << k;
  EXPECT_NE(c.buffers[0], fresh.buffer(0));  // (so the comparison above is not of defaults)
  EXPECT_EQ(c.optimizer, "sgd");
  SgdOptimizer<float> back(model.num_params(), {0.1, 0.9});
  back.load_state(c.state);
  Vec<float> x = moved, y = moved;
  const Vec<float> g = random_vec<float>(model.num_params(), 4);
  sgd.update(x, g);
  back.update(y, g);
  EXPECT_TRUE(x == y) << "the momentum buffer and its started flag came back";
  EXPECT_EQ(c.progress.steps, 7);
  EXPECT_EQ(c.progress.epochs, 1);
  EXPECT_EQ(c.progress.epoch_samples, 24);
  EXPECT_EQ(c.progress.time_s, 0.1 + 0.2);
  EXPECT_EQ(c.progress.epoch_loss_sum, 1.0 / 3.0);
  ASSERT_EQ(c.progress.per_epoch.size(), 1u);
  EXPECT_EQ(c.progress.per_epoch[0].train_loss, 2.0 / 3.0);
  EXPECT_EQ(c.progress.per_epoch[0].damping, 1.0 / 7.0);
  EXPECT_EQ(c.progress.per_epoch[0].cg_iterations, 11.0 / 3.0);
  EXPECT_EQ(c.progress.epoch_cg_sum, 17);
  EXPECT_EQ(c.progress.epoch_steps, 3);
  EXPECT_EQ(c.progress.epoch_damping, 0.1 * 3);
  EXPECT_TRUE(std::isnan(c.progress.per_epoch[0].test_loss));
  EXPECT_EQ(c.settings, (std::map<std::string, std::string>{{"batch", "8"}, {"seed", "5"}}));

  NaturalGradientOptimizer<double> ng(6, {});
  Network<double> small(mlp_spec(2, 1, 2));
  save_checkpoint(d + "n.safetensors", small, Vec<double>(Vec<double>::Zero(small.num_params())), ng, {}, {});
  const Checkpoint<double> n = load_checkpoint(d + "n.safetensors", small);
  ASSERT_EQ(n.state.vectors.size(), 2u);  // the direction and the update, both empty before a step
  EXPECT_EQ(n.state.vectors[0].second.size(), 0);
  EXPECT_EQ(n.state.vectors[1].second.size(), 0);
  ASSERT_EQ(n.state.scalars.size(), 1u);
  EXPECT_EQ(n.state.scalars[0].second, 1.0);
  // Another model's, another dtype's: refused, naming the file and the tensor.
  Network<double> other(mlp_spec(2, 3, 2));
  EXPECT_THROW(load_checkpoint(d + "n.safetensors", other), std::invalid_argument);
  Network<float> small32(mlp_spec(2, 1, 2));
  try {
    load_checkpoint(d + "n.safetensors", small32);
    ADD_FAILURE() << "a float64 checkpoint read as float32";
  } catch (const std::invalid_argument& err) {
    EXPECT_NE(std::string(err.what()).find("n.safetensors: the checkpoint's parameter \"0.weight\" is F64 but this "
                                           "run computes in float32"),
              std::string::npos)
        << err.what();
  }
}

// A causal attention mask reads back as the mask set_buffer accepts (−inf above the diagonal, or True for a
// boolean one), and a checkpoint carries it.
TEST(TrainResume, AnAttentionMaskReadsBackAndRoundTrips) {
  const std::string d = make_temp_dir("natgrad_ckpt_mask") + "/";
  for (bool boolean : {false, true}) {
    ModelSpec m;
    m.input_shape = {3, 4};
    m.layers = {LayerSpec::multihead_attention(4, 2, "mask")};
    m.layers[0].attn_mask_bool = boolean;
    Network<double> model(m);
    ASSERT_EQ(model.named_buffers().size(), 1u);
    const std::vector<double> mask = model.buffer(0);
    const double masked = boolean ? 1.0 : -std::numeric_limits<double>::infinity();
    ASSERT_EQ(mask.size(), 9u);
    for (Index i = 0; i < 3; ++i)
      for (Index j = 0; j < 3; ++j) EXPECT_EQ(mask[std::size_t(i * 3 + j)], j > i ? masked : 0.0) << i << " " << j;
    SgdOptimizer<double> sgd(model.num_params(), {});
    save_checkpoint(d + "m.safetensors", model, init_parameters(model, 1), sgd, {}, {});
    const Checkpoint<double> c = load_checkpoint(d + "m.safetensors", model);
    EXPECT_EQ(c.buffers[0], mask);
    EXPECT_NO_THROW(model.set_buffer(0, c.buffers[0].data()));
  }
}

// --- the command line ----------------------------------------------------------------------------------------

const char* kSmall = R"({"input_shape": [6], "likelihood": "categorical", "layers": [
  {"type": "linear", "in_features": 6, "out_features": 8}, {"type": "tanh"},
  {"type": "linear", "in_features": 8, "out_features": 3}]})";
// The same tensors and names with another activation: another model of the same shapes.
const char* kSmallRelu = R"({"input_shape": [6], "likelihood": "categorical", "layers": [
  {"type": "linear", "in_features": 6, "out_features": 8}, {"type": "relu"},
  {"type": "linear", "in_features": 8, "out_features": 3}]})";
// kSmall written otherwise (keys in another order, other whitespace, a default spelled out): the same model.
const char* kSmallRewritten = R"({"layers":[{"out_features":8,"type":"linear","in_features":6,"bias":true},
{"type":"tanh"},{"type":"linear","in_features":8,"out_features":3}],"likelihood":"categorical","input_shape":[6]})";
// The same tensors under other names (an identity first shifts them): another model with as many parameters.
const char* kShifted = R"({"input_shape": [6], "likelihood": "categorical", "layers": [{"type": "identity"},
  {"type": "linear", "in_features": 6, "out_features": 8}, {"type": "tanh"},
  {"type": "linear", "in_features": 8, "out_features": 3}]})";
// Slow enough per step (some 450 CG iterations over 5514 parameters, 40 ms) that a signal sent after the first
// of 30 steps lands inside the run's first epoch of 10; a small step (--lr) keeps CG's work the same each step.
const char* kSlow = R"({"input_shape": [32], "likelihood": "categorical", "layers": [
  {"type": "linear", "in_features": 32, "out_features": 128}, {"type": "tanh"},
  {"type": "linear", "in_features": 128, "out_features": 10}]})";

class TrainResumeCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto write = [](const char* spec, const std::string& name, Index samples, uint64_t seed) {
      std::ofstream(p(name + ".json")) << spec;
      const ModelFile m = read_model_spec(p(name + ".json"));
      Network<double> model(m.spec);
      save_dataset(p(name + ".safetensors"), random_dataset(model, samples, LikelihoodKind::categorical, seed),
                   m.spec.input_shape);
      save_parameters(p(name + "_other.safetensors"), model, init_parameters(model, 99), DType::F64);
    };
    write(kSmall, "small", 44, 1);
    write(kSmall, "small_other_data", 44, 8);  // (as many samples as small.safetensors, other values)
    std::ofstream(p("small_relu.json")) << kSmallRelu;
    std::ofstream(p("small_rewritten.json")) << kSmallRewritten;
    write(kSlow, "slow", 640, 2);
    std::ofstream(p("shifted.json")) << kShifted;
  }
  static std::string small(const std::string& optimizer, int epochs = 3) {
    return "train --model " + p("small.json") + " --data " + p("small.safetensors") + " --test-data " +
           p("small.safetensors") + " --dtype float64 --batch 8 --epochs " + std::to_string(epochs) + " --seed 5 " +
           optimizer;
  }
  static std::string slow() {
    return "train --model " + p("slow.json") + " --data " + p("slow.safetensors") +
           " --dtype float64 --batch 64 --epochs 3 --seed 3 --threads 1 --optimizer natgrad --fisher mc --mc-samples 8 "
           "--solver cg --cg-tol 1e-12 --cg-max-iters 500 --damping 1e-4 --damping-adapt off --lr 0.001";
  }
  static Index checkpoint_steps(const std::string& path) {
    return std::stoll(read_checkpoint_metadata(path).at("steps"));
  }
  // The log's step rows without their time: what two runs of the same training share.
  static std::vector<std::string> step_rows(const std::string& csv) {
    std::vector<std::string> rows;
    std::istringstream in(csv);
    std::string line;
    while (std::getline(in, line)) {
      if (line.compare(0, 5, "step,") != 0) continue;
      std::vector<std::string> f;
      std::stringstream ss(line);
      for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
      f.erase(f.begin() + 3);  // time_s
      std::string joined;
      for (const std::string& x : f) joined += x + ",";
      rows.push_back(joined);
    }
    return rows;
  }

  // The same training uninterrupted and stopped by --max-time after each of its first 7 steps (a new process
  // each time, resuming the checkpoint, across the end of epoch 1 at step 6), then resumed to the end: the same
  // --save bytes, the same epochs in the report, every step once in the continued log. The resumed runs are
  // given other --weights: were the checkpoint ignored, they would train from those; the last one other threads.
  void resumes_bit_identically(const std::string& optimizer, const std::string& tag) {
    const std::string base = small(optimizer), a = p(tag + "_a.safetensors"), b = p(tag + "_b.safetensors"),
                      c = p(tag + "_c.safetensors"), other = " --weights " + p("small_other.safetensors");
    Result r = run(base + " --threads 1 --save " + a + " --log " + p(tag + "_a.csv") + " --report " + p(tag + "_a.json"));
    ASSERT_EQ(r.code, 0) << r.err;
    r = run(base + " --threads 1 --max-time 1e-9 --checkpoint " + c + " --log " + p(tag + "_b.csv"));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("(stopped by --max-time)"), std::string::npos) << r.out;
    EXPECT_EQ(checkpoint_steps(c), 1);
    for (Index k = 2; k <= 7; ++k) {
      r = run(base + other + " --threads 1 --max-time 1e-9 --resume " + c + " --checkpoint " + c + " --log " + p(tag + "_b.csv"));
      ASSERT_EQ(r.code, 0) << r.err;
      EXPECT_NE(r.out.find("resumed from " + c + " at step " + std::to_string(k - 1)), std::string::npos) << r.out;
      EXPECT_EQ(checkpoint_steps(c), k);
    }
    r = run(base + other + " --threads 2 --resume " + c + " --checkpoint " + c + " --save " + b + " --log " + p(tag + "_b.csv") +
            " --report " + p(tag + "_b.json"));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(checkpoint_steps(c), 18) << "the end of the run";
    const std::string bytes_a = slurp(a);
    ASSERT_FALSE(bytes_a.empty());
    EXPECT_TRUE(bytes_a == slurp(b)) << tag << ": the resumed run's parameters differ";
    const auto ja = nlohmann::json::parse(slurp(p(tag + "_a.json"))), jb = nlohmann::json::parse(slurp(p(tag + "_b.json")));
    EXPECT_EQ(jb["steps"], 18);
    ASSERT_EQ(jb["epochs"].size(), 3u);
    for (std::size_t e = 0; e < 3; ++e) {
      EXPECT_EQ(ja["epochs"][e]["train_loss"].get<double>(), jb["epochs"][e]["train_loss"].get<double>()) << e;
      EXPECT_EQ(ja["epochs"][e]["test_loss"].get<double>(), jb["epochs"][e]["test_loss"].get<double>()) << e;
      for (const char* key : {"damping", "cg_iterations"})  // natgrad's, over a stop inside the epoch too
        if (ja["epochs"][e].contains(key)) EXPECT_EQ(ja["epochs"][e][key], jb["epochs"][e][key]) << key << " " << e;
    }
    EXPECT_EQ(jb["resumed"]["steps"], 7);
    const std::vector<std::string> rows_a = step_rows(slurp(p(tag + "_a.csv"))), rows_b = step_rows(slurp(p(tag + "_b.csv")));
    EXPECT_EQ(rows_a.size(), 18u);
    EXPECT_EQ(rows_a, rows_b) << "the continued log holds each step once, as the uninterrupted run's";
  }
};

TEST_F(TrainResumeCli, AdamStoppedAfterEachStepResumesToTheSameBytes) { resumes_bit_identically("--optimizer adam --lr 0.05", "adam"); }

TEST_F(TrainResumeCli, SgdWithMomentumResumesToTheSameBytes) {
  resumes_bit_identically("--optimizer sgd --lr 0.1 --momentum 0.9", "sgd");
}

TEST_F(TrainResumeCli, NaturalGradientWithMonteCarloCurvatureAndLmDampingResumesToTheSameBytes) {
  resumes_bit_identically("--optimizer natgrad --fisher mc --mc-samples 2 --solver cg --damping 0.1 --damping-adapt lm",
                          "natgrad");
}

// A command in the background, its stdout and stderr in files (no --quiet: the progress lines are watched).
class Background {
 public:
  Background(const std::string& args, const std::string& tag) : out_(p(tag + ".out")), err_(p(tag + ".err")) {
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 1);
      ::dup2(::open(err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 2);
      ::execl("/bin/sh", "sh", "-c", ("exec " + std::string(NATGRAD_CLI) + " " + args).c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0 && code_ == -2) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  // Whether stderr came to hold `text` within 60 s (false if the process ended first).
  bool wait_for(const std::string& text) {
    for (int i = 0; i < 6000; ++i) {
      if (slurp(err_).find(text) != std::string::npos) return true;
      if (finished()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  void signal(int sig) const { ::kill(pid_, sig); }
  // The exit status within `seconds` (-2 while it still runs).
  int finish(double seconds) {
    for (int i = 0; i <= int(seconds * 100) && !finished(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return code_;
  }
  std::string out() const { return slurp(out_); }
  std::string err() const { return slurp(err_); }

 private:
  bool finished() {
    int status = 0;
    if (code_ == -2 && ::waitpid(pid_, &status, WNOHANG) == pid_) code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return code_ != -2;
  }
  std::string out_, err_;
  pid_t pid_ = -1;
  int code_ = -2;
};

// SIGINT after the first step: the run stops at the next step boundary inside the epoch, writes the
// checkpoint, the log and the report, and exits with 130; resumed, it writes the uninterrupted run's bytes. So
// does a run killed after its first epoch, from the checkpoint written at that epoch's end.
TEST_F(TrainResumeCli, KfacWithItsRunningFactorsResumesToTheSameBytes) {
  // Inverses refreshed every 3 steps: a stop between refreshes must bring back the stale factors too.
  resumes_bit_identically("--optimizer kfac --inverse-every 3 --damping 0.1", "kfac");
}

TEST_F(TrainResumeCli, SigintMidEpochCheckpointsAndTheResumedRunMatches) {
  const std::string a = p("slow_a.safetensors"), b = p("slow_b.safetensors"), c = p("slow_c.safetensors");
  Result r = run(slow() + " --save " + a);
  ASSERT_EQ(r.code, 0) << r.err;
  Background bg(slow() + " --checkpoint " + c + " --log " + p("slow_b.csv") + " --report " + p("slow_int.json"), "slow_int");
  ASSERT_TRUE(bg.wait_for("step 1/30")) << bg.err();
  bg.signal(SIGINT);
  ASSERT_EQ(bg.finish(60), 130) << bg.err();
  EXPECT_NE(bg.err().find("interrupt received"), std::string::npos) << bg.err();
  EXPECT_NE(bg.out().find("(stopped by SIGINT)"), std::string::npos) << bg.out();
  const Index k = checkpoint_steps(c);
  EXPECT_GE(k, 1);
  EXPECT_LT(k, 10) << "the signal was to land inside the first epoch";
  EXPECT_NE(bg.out().find("wrote the checkpoint (step " + std::to_string(k) + ") to " + c), std::string::npos) << bg.out();
  const auto j = nlohmann::json::parse(slurp(p("slow_int.json")));
  EXPECT_EQ(j["interrupted"]["signal"], "SIGINT");
  EXPECT_EQ(j["steps"], k);
  EXPECT_EQ(step_rows(slurp(p("slow_b.csv"))).size(), std::size_t(k));
  r = run(slow() + " --resume " + c + " --save " + b + " --log " + p("slow_b.csv"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(slurp(a) == slurp(b)) << "resumed at step " << k;
  EXPECT_EQ(step_rows(slurp(p("slow_b.csv"))).size(), 30u);

  // A run killed outright (SIGKILL: nothing written at the stop) resumes from its last epoch's checkpoint.
  const std::string killed = p("slow_killed.safetensors"), b2 = p("slow_b2.safetensors");
  {
    Background bg(slow() + " --checkpoint " + killed, "slow_kill");
    for (int i = 0; i < 6000 && !exists(killed); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    bg.signal(SIGKILL);  // (the checkpoint appears whole: it is renamed into place)
    bg.finish(30);
  }
  const Index at = checkpoint_steps(killed);
  EXPECT_TRUE(at == 10 || at == 20) << at;
  r = run(slow() + " --resume " + killed + " --save " + b2);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(slurp(a) == slurp(b2)) << "resumed at step " << at;
}

// SIGTERM: 143 and the checkpoint; without --checkpoint the run says the state was not saved (and still 130 /
// 143, with the log).
TEST_F(TrainResumeCli, SigtermCheckpointsAndASignalWithoutCheckpointSaysSo) {
  const std::string c = p("term_c.safetensors");
  {
    Background bg(slow() + " --checkpoint " + c, "term");
    ASSERT_TRUE(bg.wait_for("step 1/30")) << bg.err();
    bg.signal(SIGTERM);
    ASSERT_EQ(bg.finish(60), 143) << bg.err();
    EXPECT_GE(checkpoint_steps(c), 1);
  }
  Background bg(slow() + " --log " + p("nockpt.csv"), "nockpt");
  ASSERT_TRUE(bg.wait_for("step 1/30")) << bg.err();
  bg.signal(SIGINT);
  ASSERT_EQ(bg.finish(60), 130) << bg.err();
  EXPECT_NE(bg.out().find("interrupted by SIGINT at step "), std::string::npos) << bg.out();
  EXPECT_NE(bg.out().find(": the training state was not saved (give --checkpoint to resume later)"), std::string::npos)
      << bg.out();
  EXPECT_FALSE(step_rows(slurp(p("nockpt.csv"))).empty());
}

// A resume that cannot continue the run ends with one line naming what differs, and the existing --save and
// --log files stay as they were.
TEST_F(TrainResumeCli, ABadResumeEndsWithOneLineAndOverwritesNothing) {
  const std::string c = p("bad_c.safetensors"), save = p("bad_save.safetensors"), log = p("bad.csv");
  const std::string adam = small("--optimizer adam --lr 0.05");
  ASSERT_EQ(run(adam + " --max-time 1e-9 --checkpoint " + c).code, 0);
  std::string truncated = slurp(c);
  truncated.resize(truncated.size() / 2);
  std::ofstream(p("truncated.safetensors"), std::ios::binary) << truncated;
  const std::string outputs = " --save " + save + " --log " + log;
  {  // The checkpoint as natgrad wrote it before it recorded the model's and the data's CRC-32s.
    Network<double> net(read_model_spec(p("small.json")).spec);
    const Checkpoint<double> k = load_checkpoint<double>(c, net);
    std::map<std::string, std::string> settings = k.settings;
    ASSERT_EQ(settings.erase("model_crc32") + settings.erase("data_crc32"), 2u);
    AdamOptimizer<double> adam(net.num_params(), {0.05});
    adam.load_state(k.state);
    save_checkpoint(p("old.safetensors"), net, k.theta, adam, k.progress, settings);
  }
  struct Case {
    std::string args, expected;
    int code;
  };
  const std::string data = " --data " + p("small.safetensors") + " --dtype float64 --seed 5 --epochs 3 --resume ";
  const std::vector<Case> cases = {
      {"train --model " + p("small.json") + data + c + " --optimizer adam --lr 0.05 --batch 16",
       "--batch differs: the checkpoint's 8, this run's 16", 1},
      {small("--optimizer sgd --lr 0.05") + " --resume " + c, "--optimizer differs: the checkpoint's adam, this run's sgd", 1},
      {small("--optimizer adam --lr 0.01") + " --resume " + c, "--lr differs: the checkpoint's 0.050000000000000003, this run's 0.01", 1},
      {small("--optimizer adam --lr 0.05 --no-shuffle") + " --resume " + c, "shuffling (--no-shuffle) differs", 1},
      {"train --model " + p("small.json") + " --data " + p("small.safetensors") +
           " --dtype float32 --batch 8 --epochs 3 --seed 5 --optimizer adam --lr 0.05 --resume " + c,
       "--dtype differs: the checkpoint's float64, this run's float32", 1},
      {"train --model " + p("small.json") + " --data " + p("small.safetensors") +
           " --dtype float64 --batch 8 --epochs 3 --seed 6 --optimizer adam --lr 0.05 --resume " + c,
       "--seed differs: the checkpoint's 5, this run's 6", 1},
      {"train --model " + p("slow.json") + " --data " + p("slow.safetensors") +
           " --dtype float64 --batch 8 --epochs 3 --seed 5 --optimizer adam --lr 0.05 --resume " + c,
       "the model's parameter count differs: the checkpoint's 83, this run's 5514", 1},
      {"train --model " + p("shifted.json") + data + c + " --optimizer adam --lr 0.05 --batch 8",
       "the checkpoint lacks the parameter \"1.weight\" (a checkpoint of another model?)", 1},
      // Another activation (every tensor's name and shape the same), and other samples as many as the
      // checkpoint's: they would change the result.
      {"train --model " + p("small_relu.json") + data + c + " --optimizer adam --lr 0.05 --batch 8",
       "--resume " + c + ": the model differs from the checkpoint's (CRC-32 of its description: the checkpoint's ", 1},
      {"train --model " + p("small.json") + " --data " + p("small_other_data.safetensors") +
           " --dtype float64 --batch 8 --epochs 3 --seed 5 --optimizer adam --lr 0.05 --resume " + c,
       "--resume " + c + ": the training data differs from the checkpoint's (CRC-32 of its inputs and targets: the checkpoint's ", 1},
      {small("--optimizer adam --lr 0.05") + " --resume " + p("old.safetensors"),
       "--resume " + p("old.safetensors") + ": the checkpoint predates natgrad's check of the model and the training "
       "data", 1},
      {small("--optimizer adam --lr 0.05") + " --resume " + p("truncated.safetensors"), p("truncated.safetensors") + ": ", 1},
      {small("--optimizer adam --lr 0.05") + " --resume " + p("small_other.safetensors"),
       p("small_other.safetensors") + ": not a training checkpoint", 1},
  };
  for (const Case& k : cases) {
    std::ofstream(save) << "keep";
    std::ofstream(log) << "keep";
    const Result r = run(k.args + outputs);
    EXPECT_EQ(r.code, k.code) << k.args << "\n" << r.err;
    EXPECT_NE(r.err.find(k.expected), std::string::npos) << k.args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(slurp(save), "keep") << k.args;
    EXPECT_EQ(slurp(log), "keep") << k.args;
  }
  // The same model written otherwise resumes (its canonical description is the same).
  const Result same = run("train --model " + p("small_rewritten.json") + data + c + " --optimizer adam --lr 0.05 --batch 8");
  EXPECT_EQ(same.code, 0) << same.err;
  // The epochs done already: --epochs is the total.
  const std::string adam1 = small("--optimizer adam --lr 0.05", 1);
  ASSERT_EQ(run(adam1 + " --checkpoint " + c).code, 0);
  std::ofstream(save) << "keep";
  const Result r = run(adam1 + " --resume " + c + " --save " + save);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("--epochs 1 is the total, and the checkpoint " + c + " has completed 1 epochs"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(save), "keep");
}

// A test split whose samples have another shape than the model's input (and the training data's) ends with one
// line naming its file, before anything is written: a safetensors --test-data of width 7 for a model of width
// 6, and an IDX directory whose t10k images are 5x5 beside training images of 4x4.
TEST_F(TrainResumeCli, ATestSplitOfAnotherShapeEndsWithOneLineAndWritesNothing) {
  {
    Network<double> wide(mlp_spec(7, 4, 3));
    save_dataset(p("wide.safetensors"), random_dataset(wide, 10, LikelihoodKind::categorical, 4), Shape{7});
  }
  const std::string idx = p("idx_shapes");
  ::mkdir(idx.c_str(), 0755);
  auto images = [&](const std::string& split, uint32_t n, uint32_t side) {
    std::string px;
    for (uint32_t k = 0; k < n * side * side; ++k) px.push_back(char((k * 37) % 256));
    write_bytes(idx + "/" + split + "-images-idx3-ubyte", idx_bytes({n, side, side}, px));
    write_bytes(idx + "/" + split + "-labels-idx1-ubyte", idx_bytes({n}, std::string(n, char(1))));
  };
  images("train", 6, 4);
  images("t10k", 3, 4);
  std::ofstream(p("idx_model.json")) << R"({"input_shape": [1, 4, 4], "likelihood": "categorical", "layers": [
    {"type": "flatten"}, {"type": "linear", "in_features": 16, "out_features": 3}]})";
  const std::string outputs = " --save " + p("split_save.safetensors") + " --log " + p("split.csv") + " --checkpoint " +
                              p("split_c.safetensors") + " --report " + p("split.json");
  const std::string on_idx = "train --model " + p("idx_model.json") + " --data " + idx + " --epochs 1 --batch 4";
  Result r = run(on_idx);
  ASSERT_EQ(r.code, 0) << "the IDX directory trains while its splits agree\n" << r.err;
  images("t10k", 3, 5);
  for (const auto& [args, expected] : std::vector<std::pair<std::string, std::string>>{
           {"train --model " + p("small.json") + " --data " + p("small.safetensors") + " --test-data " +
                p("wide.safetensors") + " --epochs 1 --batch 8",
            p("wide.safetensors") + ": \"inputs\" samples have shape [7] but the model's input_shape is [6]"},
           {on_idx, idx + "/t10k-images-idx3-ubyte: images of 5x5 do not match the model's input_shape [1, 4, 4]"}}) {
    r = run(args + outputs);
    EXPECT_EQ(r.code, 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(expected), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    for (const char* name : {"split_save.safetensors", "split.csv", "split_c.safetensors", "split.json"})
      EXPECT_FALSE(exists(p(name))) << name << " written by " << args;
  }
}

}  // namespace
