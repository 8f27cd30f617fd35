// What the command line refuses, warns about and prints before it computes: spectra of P or more eigenvalues,
// output paths that cannot be written, options of another command, --max-memory 0, a singular F + 0·I, a
// --resume whose checkpoint records other settings or fingerprints; --quiet's silence; the help texts; the
// embedded default's --spectrum 0 and --deflate 0.
#include "cli_fixture.h"
#include "report.h"
#include "train_checkpoint.h"

#include <natgrad/io/parameters_io.h>

#include <Eigen/Eigenvalues>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;

namespace {

// run() without --quiet: what a user sees on stderr.
Result run_loud(const std::string& args, const char* binary = NATGRAD_CLI) {
  const std::string cmd = std::string(binary) + " " + args + " > " + p("stdout") + " 2> " + p("stderr");
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(p("stdout")), slurp(p("stderr"))};
}

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

// The fixture's model has P = 136 parameters: K >= P eigenvalues are refused with a sentence, at once.
TEST_F(Cli, ASpectrumOfPOrMoreEigenvaluesIsRefused) {
  Loaded l = load();
  const Index P = l.model->num_params();
  ASSERT_EQ(P, 136);
  for (const std::string& args : {"solve " + base + " --spectrum 136", "solve " + base + " --spectrum 500",
                                  "spectrum " + base + " --top 136"}) {
    const Result r = run(args + " --report " + p("never.json"));
    EXPECT_EQ(r.code, 2) << args;
    EXPECT_NE(r.err.find(" must be below the parameter count 136"), std::string::npos) << r.err;
    EXPECT_EQ(lines(r.err), 1) << r.err;
    EXPECT_FALSE(exists(p("never.json")));
  }
  EXPECT_EQ(run("solve " + base + " --spectrum 135").code, 0);
}

// F is positive semi-definite: eigenvalues Lanczos finds below zero are rounding, printed as 0 (the report
// keeps them). The categorical F here has rank at most N(C - 1) = 120 < 136, so the last of the top 135 sit at
// zero, within rounding of either sign (in float32 on AVX-512 one of them is -3e-17).
TEST_F(Cli, NegativeRoundingIsPrintedAsZero) {
  const Result r = run("spectrum " + base + " --top 135 --report " + p("zero.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto ev = nlohmann::json::parse(slurp(p("zero.json")))["spectrum"]["eigenvalues"].get<std::vector<double>>();
  const std::string prefix = "top-135 eigenvalues of F: ";
  const std::string line = r.out.substr(r.out.find(prefix) + prefix.size());
  std::vector<double> printed;
  std::istringstream in(line.substr(0, line.find('\n')));
  for (double x; in >> x;) printed.push_back(x);
  ASSERT_EQ(printed.size(), ev.size());
  int negative = 0;
  for (std::size_t i = 0; i < ev.size(); ++i) {
    EXPECT_GE(printed[i], 0.0) << i;
    if (ev[i] < 0) {
      ++negative;
      EXPECT_EQ(printed[i], 0.0) << i;
      EXPECT_GT(ev[i], -1e-10) << "a negative eigenvalue beyond rounding: " << ev[i];
    }
  }
  std::cout << "[ info ] " << negative << " of the 135 computed eigenvalues are below zero\n";
}

// The same rule on values chosen to need it, whatever the instruction set's rounding.
TEST(CliFormat, NegativeEigenvaluesPrintAsZero) {
  Vec<double> ev(4);
  ev << 2.5, 1e-9, -3e-17, -0.0;
  EXPECT_EQ(natgrad::cli::format_eigenvalues(ev), "2.500000e+00 1.000000e-09 0.000000e+00 0.000000e+00");
}

// --resume's one comparison of a checkpoint's metadata with the run's pairs: equal pairs pass (keys the run
// does not give are not compared); the first pair that differs is named in one line: a setting with the
// checkpoint's value (or "(not recorded)") and the run's, a fingerprint with which of the model and the
// training data differs and what to give, and a checkpoint without fingerprints as older than them.
TEST(CliResume, OneCheckNamesTheFirstPairThatDiffers) {
  using Pairs = std::vector<std::pair<std::string, std::string>>;
  const std::map<std::string, std::string> saved = {{"batch", "8"},
                                                    {"seed", "5"},
                                                    {"model_crc32", "0123abcd"},
                                                    {"data_crc32", "89abcdef"},
                                                    {"solver", "cg"}};
  auto refusal = [](const std::map<std::string, std::string>& in, const Pairs& now) {
    try {
      cli::check_resume("c.safetensors", in, now);
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      const std::string tail = "; nothing written";
      EXPECT_EQ(what.substr(what.size() - std::min(what.size(), tail.size())), tail) << what;
      return what;
    }
    return std::string("(accepted)");
  };
  auto starts = [](const std::string& text, const std::string& head) { return text.rfind(head, 0) == 0; };
  const Pairs same = {{"batch", "8"}, {"seed", "5"}, {"model_crc32", "0123abcd"}, {"data_crc32", "89abcdef"}};
  EXPECT_EQ(refusal(saved, same), "(accepted)");
  std::string r = refusal(saved, {{"batch", "16"}, {"seed", "6"}, {"model_crc32", "ffffffff"}});
  EXPECT_TRUE(starts(r, "--resume c.safetensors: --batch differs: the checkpoint's 8, this run's 16 (")) << r;
  r = refusal(saved, {{"batch", "8"}, {"seed", "6"}});
  EXPECT_TRUE(starts(r, "--resume c.safetensors: --seed differs: the checkpoint's 5, this run's 6 (")) << r;
  r = refusal(saved, {{"cg_tol", "1e-06"}});
  EXPECT_TRUE(starts(r,
                     "--resume c.safetensors: --cg-tol differs: the checkpoint's (not recorded), this run's "
                     "1e-06 ("))
      << r;
  r = refusal(saved, {{"batch", "8"}, {"model_crc32", "ffffffff"}, {"data_crc32", "00000000"}});
  EXPECT_TRUE(starts(r,
                     "--resume c.safetensors: the model differs from the checkpoint's (CRC-32 of its "
                     "description: the checkpoint's 0123abcd, this run's ffffffff): "))
      << r;
  EXPECT_NE(r.find("give the --model the checkpoint was trained with"), std::string::npos) << r;
  r = refusal(saved, {{"model_crc32", "0123abcd"}, {"data_crc32", "00000000"}});
  EXPECT_TRUE(starts(r,
                     "--resume c.safetensors: the training data differs from the checkpoint's (CRC-32 of its "
                     "inputs and targets: the checkpoint's 89abcdef, this run's 00000000): "))
      << r;
  EXPECT_NE(r.find("give the --data the checkpoint was trained on"), std::string::npos) << r;
  const std::map<std::string, std::string> older = {{"batch", "8"}, {"seed", "5"}};
  r = refusal(older, {{"batch", "8"}, {"model_crc32", "0123abcd"}, {"data_crc32", "89abcdef"}});
  EXPECT_TRUE(starts(r,
                     "--resume c.safetensors: the checkpoint predates natgrad's check of the model and the "
                     "training data (it records no model_crc32)"))
      << r;
}

// Every output path is checked before anything is computed: a solve that would run for 10^8 iterations ends at
// once when its output cannot be written.
TEST_F(Cli, OutputPathsAreCheckedBeforeComputing) {
  const std::string forever = "solve " + base + " --cg-tol 1e-15 --cg-max-iters 100000000 --damping ";
  const std::string missing = "/nonexistent/dir/x.safetensors";
  ::mkdir(p("a_directory").c_str(), 0755);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {forever + "0 --output " + missing,
       "--output " + missing + ": the directory /nonexistent/dir does not exist"},
      {forever + "0 --save-gradient " + missing,
       "--save-gradient " + missing + ": the directory /nonexistent/dir does not exist"},
      {forever + "0 --report /nonexistent/r.json",
       "--report /nonexistent/r.json: the directory /nonexistent does not exist"},
      {forever + "0 --output " + p("a_directory"), "--output " + p("a_directory") + ": is a directory"},
      {forever + "1e-1,1e-2 --output /nonexistent/d.safetensors",
       "--output /nonexistent/d_1e-01.safetensors"},
      {"spectrum " + base + " --top 2 --eigenvectors " + missing, "--eigenvectors " + missing},
      {"spectrum " + base + " --top 2 --trace --probes 100000000 --report " + missing, "--report " + missing},
      {"fvp " + base + " --vector " + p("v.safetensors") + " --output " + missing, "--output " + missing},
      {"profile " + base + " --products 100000000 --report " + missing, "--report " + missing},
  };
  for (const auto& [args, expect] : cases) {
    const auto t0 = std::chrono::steady_clock::now();
    const Result r = run(args);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(r.code, 1) << args;
    EXPECT_NE(r.err.find(expect), std::string::npos) << args << "\nstderr: " << r.err;
    EXPECT_EQ(lines(r.err), 1) << r.err;
    EXPECT_LT(secs, 20.0) << args;  // nothing was computed (each of these runs for hours otherwise)
  }
  if (::geteuid() != 0) {  // (root may write anywhere)
    ::mkdir(p("read_only").c_str(), 0555);
    const Result r = run(forever + "0 --output " + p("read_only/d.safetensors"));
    EXPECT_NE(r.err.find("the directory " + p("read_only") + " is not writable"), std::string::npos) << r.err;
  }
}

// fvp, spectrum and profile do not offer solve's options, and name whose they are when given.
TEST_F(Cli, EachCommandListsOnlyItsOwnOptions) {
  for (const std::string cmd : {"fvp", "spectrum", "profile"}) {
    const Result h = run(cmd + " --help");
    ASSERT_EQ(h.code, 0) << cmd;
    for (const char* o : {"--cg-tol", "--cg-max-iters", "--preconditioner", "--save-gradient", "--deflate", "--compare"})
      EXPECT_EQ(h.out.find(o), std::string::npos) << cmd << " --help lists " << o;
    EXPECT_EQ(h.out.find("--curvature-batch") != std::string::npos, cmd == "spectrum") << cmd;
    EXPECT_EQ(h.out.find("multi-shift"), std::string::npos) << cmd << ": a list of dampings is solve's";
  }
  const std::string fvp = "fvp " + base + " --vector " + p("v.safetensors") + " --output " + p("fv_never.safetensors");
  for (const auto& [args, expect] : std::vector<std::pair<std::string, std::string>>{
           {fvp + " --cg-tol 1e-3", "--cg-tol is not an option of `natgrad fvp` (it is one of `natgrad solve`)"},
           {fvp + " --curvature-batch 5", "--curvature-batch is not an option of `natgrad fvp`"},
           {"spectrum " + base + " --cg-max-iters 3", "--cg-max-iters is not an option of `natgrad spectrum`"},
           {"spectrum " + base + " --preconditioner=diagonal", "--preconditioner is not an option of `natgrad spectrum`"},
           {"profile " + base + " --curvature-batch 4", "--curvature-batch is not an option of `natgrad profile`"}}) {
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << args;
    EXPECT_NE(r.err.find(expect), std::string::npos) << r.err;
    EXPECT_EQ(lines(r.err), 1) << r.err;
  }
  EXPECT_FALSE(exists(p("fv_never.safetensors")));
  // The eigenvector file as it is: one [K, ...shape] tensor per parameter, row 0 the largest.
  const Result s = run("spectrum --help");
  EXPECT_NE(s.out.find("one [K, ...shape] tensor per parameter"), std::string::npos) << s.out;
  EXPECT_NE(s.out.find("row 0 the largest eigenvalue's"), std::string::npos) << s.out;
  // --preconditioner says what it is and where the measurements are, not the measurements.
  const Result solve = run("solve --help");
  const std::size_t at = solve.out.find("--preconditioner");
  ASSERT_NE(at, std::string::npos);
  const std::string text = solve.out.substr(at, solve.out.find("\n  --", at + 1) - at);
  EXPECT_NE(text.find("docs/solvers.md"), std::string::npos) << text;
  EXPECT_FALSE(std::regex_search(text, std::regex("[0-9]+ products|1e-[0-9]"))) << text;  // no measurements
  EXPECT_LT(text.size(), 400u) << text;
}

TEST_F(Cli, MaxMemoryMustBePositive) {
  for (const std::string v : {"0", "-1", "0.0"}) {
    const Result r = run("solve " + base + " --max-memory " + v);
    EXPECT_EQ(r.code, 2) << v;
    EXPECT_NE(r.err.find("--max-memory must be > 0 (GB), got "), std::string::npos) << r.err;
  }
  EXPECT_EQ(run("solve " + base + " --max-memory 4").code, 0);
}

// λ = 0 with F provably singular (P above its rank bound) is warned about before CG starts; the bound is
// checked against the dense Fisher's numerical rank. With a bound at or above P, no warning.
TEST_F(Cli, DampingZeroWarnsWhenFIsSingularOnTheBatch) {
  Loaded l = load();
  Network<double> model(l.m.spec);
  const Mat<double> Fd = dense_fisher(model, Vec<double>(l.theta.cast<double>()), l.data.cast<double>(),
                                      l.m.likelihood, FisherKind::exact);
  const Vec<double> ev = Eigen::SelfAdjointEigenSolver<Mat<double>>(Fd).eigenvalues();
  Index rank = 0;
  for (Index i = 0; i < ev.size(); ++i) rank += ev[i] > 1e-10 * ev.maxCoeff();
  EXPECT_LE(rank, 40 * 3);  // N(C - 1): the bound the warning quotes
  const std::string quick = " --cg-max-iters 3 --damping 0";
  Result r = run_loud("solve " + base + quick);
  EXPECT_NE(r.err.find("warning: --damping 0: F has rank at most 120 on this batch (N*T*(C-1)) but 136 parameters, "
                       "so F + 0*I is singular"), std::string::npos) << r.err;
  // Announced before CG's first line.
  EXPECT_LT(r.err.find("warning: --damping 0"), r.err.find("cg ")) << r.err;
  r = run_loud("solve " + base + quick + " --fisher empirical");
  EXPECT_NE(r.err.find("F has rank at most 40 on this batch (N, one score per sample)"), std::string::npos) << r.err;
  r = run_loud("solve " + base + quick + " --fisher mc --mc-samples 2");
  EXPECT_NE(r.err.find("F has rank at most 80 on this batch (N*T*S sampled scores)"), std::string::npos) << r.err;
  r = run_loud("solve " + base + quick + " --curvature-batch 10");
  EXPECT_NE(r.err.find("F has rank at most 30 on this batch"), std::string::npos) << r.err;
  r = run_loud("solve " + base + " --cg-max-iters 3 --damping 1e-3");
  EXPECT_EQ(r.err.find("warning: --damping 0"), std::string::npos) << r.err;
  // Gaussian outputs: rank at most N·C = 160 >= 136, no warning.
  std::string spec = kModel;
  spec.replace(spec.find("categorical"), std::string("categorical").size(), "gaussian");
  std::ofstream(p("gauss.json")) << spec;
  save_dataset(p("gauss.safetensors"), random_dataset(*l.model, 40, LikelihoodKind::gaussian, 8), l.m.spec.input_shape);
  const std::string gauss = "--model " + p("gauss.json") + " --weights " + p("w.safetensors") + " --data " + p("gauss.safetensors");
  r = run_loud("solve " + gauss + quick);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err.find("warning: --damping 0"), std::string::npos) << r.err;
  r = run_loud("solve " + gauss + quick + " --fisher empirical");
  EXPECT_NE(r.err.find("F has rank at most 40"), std::string::npos) << r.err;
  // --quiet: results on stdout, nothing on stderr.
  r = run("solve " + base + quick);
  EXPECT_EQ(r.err, "");
}

// The warning's bound counts the positions that count: labels of -100 (ignore_index) are left out, over the
// batch or the curvature subset (M = 15 of 40 samples here, 3 of the first 10).
TEST_F(Cli, DampingZeroWarningCountsOnlyTheTargetsThatAreNotIgnored) {
  Loaded l = load();
  Dataset<float> padded = l.data;
  for (std::size_t n = 0; n < padded.labels.size(); ++n)
    if (n % 8 != 0 && n % 8 != 3 && n % 8 != 5) padded.labels[n] = -100;  // keeps 0, 3, 5 of every 8
  save_dataset(p("padded.safetensors"), padded, l.m.spec.input_shape);
  const std::string args = "--model " + p("model.json") + " --weights " + p("w.safetensors") + " --data " +
                           p("padded.safetensors") + " --cg-max-iters 3 --damping 0";
  Result r = run_loud("solve " + args);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("F has rank at most 45 on this batch (M*(C-1), M the positions not ignored)"),
            std::string::npos) << r.err;
  r = run_loud("solve " + args + " --curvature-batch 10");
  EXPECT_NE(r.err.find("F has rank at most 12 on this batch (M*(C-1)"), std::string::npos) << r.err;
}

// --quiet silences the notes too: F64 weights converted for a float32 run.
TEST_F(Cli, QuietSilencesEverythingButResultsAndErrors) {
  Loaded l = load();
  save_parameters(p("w64q.safetensors"), *l.model, l.theta, DType::F64);
  const std::string args = "solve --model " + p("model.json") + " --data " + p("d.safetensors") + " --weights " +
                           p("w64q.safetensors") + " --spectrum 2 --output " + p("q.safetensors");
  const Result loud = run_loud(args);
  ASSERT_EQ(loud.code, 0) << loud.err;
  EXPECT_NE(loud.err.find("note: " + p("w64q.safetensors") + ": converted F64 to float32"), std::string::npos) << loud.err;
  const Result quiet = run(args);
  ASSERT_EQ(quiet.code, 0) << quiet.err;
  EXPECT_EQ(quiet.err, "");
  for (const char* result : {"natgrad solve: ", "loss: ", "gradient norm: ", "CG converged", "top-2 eigenvalues of F: ",
                             "condition number of F + lambda*I: ", "timing (s): ", "wrote the direction to "})
    EXPECT_NE(quiet.out.find(result), std::string::npos) << result << "\n" << quiet.out;
}

// The embedded default honours --spectrum 0 (no spectrum, plain CG) and --deflate 0 (the spectrum, but plain
// CG): that CG is the same as without a spectrum, bit for bit.
TEST(CliEmbedded, SpectrumZeroAndDeflateZeroAreHonoured) {
  if (!exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST is not installed (dataset-fashion-mnist): no embedded default to run";
  const std::string d = make_temp_dir("natgrad_embedded") + "/";
  auto solve = [&](const std::string& args, const std::string& tag) {
    const std::string cmd = std::string(SOLVE_NATURAL_GRADIENT) + " --batch 100 --cg-tol 1e-4 --quiet " + args +
                            " --output " + d + tag + ".safetensors --report " + d + tag + ".json > " + d + tag + ".out";
    const int status = std::system(cmd.c_str());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd;
    return nlohmann::json::parse(slurp(d + tag + ".json"));
  };
  const auto none = solve("--spectrum 0", "none");
  EXPECT_FALSE(none.contains("spectrum"));
  EXPECT_FALSE(none.contains("condition"));
  EXPECT_EQ(none["cg"]["deflated_eigenpairs"].get<Index>(), 0);
  EXPECT_EQ(slurp(d + "none.out").find("eigenvalues"), std::string::npos);
  const auto plain = solve("--deflate 0", "plain");
  ASSERT_TRUE(plain.contains("spectrum"));
  EXPECT_EQ(plain["spectrum"]["eigenvalues"].size(), 10u);
  EXPECT_EQ(plain["cg"]["deflated_eigenpairs"].get<Index>(), 0);
  EXPECT_EQ(plain["cg"]["products"], none["cg"]["products"]);
  EXPECT_EQ(slurp(d + "plain.safetensors"), slurp(d + "none.safetensors"));
  const auto deflated = solve("", "default");
  EXPECT_EQ(deflated["cg"]["deflated_eigenpairs"].get<Index>(), 10);
  EXPECT_LT(deflated["cg"]["products"].get<Index>(), none["cg"]["products"].get<Index>());
}

// docs/formats.md lists every field the reports hold: each key of a solve (with a spectrum, a comparison and
// a list of dampings), fvp, spectrum (every part) and profile report, at any depth, appears in its Reports
// section as `key`.
TEST_F(Cli, EveryReportFieldIsDocumented) {
  std::ifstream in(std::string(NATGRAD_DOCS) + "/formats.md");
  const std::string doc((std::istreambuf_iterator<char>(in)), {});
  const std::size_t from = doc.find("## Reports (JSON, `--report`)"), to = doc.find("## Exit status");
  ASSERT_NE(from, std::string::npos);
  ASSERT_NE(to, std::string::npos);
  const std::string section = doc.substr(from, to - from);
  const std::string fvp = " --vector " + p("v.safetensors") + " --output " + p("doc_fv.safetensors");
  const std::vector<std::string> runs = {
      "solve " + base + " --spectrum 3 --damping 1e-2 --compare empirical,diagonal",
      "solve " + base + " --spectrum 2 --damping 1e-1,1e-2 --output " + p("doc_d.safetensors"),
      "fvp " + base + fvp,
      "spectrum " + base + " --top 2 --trace --density --per-layer --probes 4 --damping 1e-2",
      "profile " + base + " --products 2",
      "solve " + base + " --solver smw --spectrum 2 --damping 1e-2",
      "solve " + base + " --solver auto --damping 1e-1,1e-2",
      "spectrum " + base + " --exact --top 2",
      "train " + base + " --optimizer natgrad --epochs 2 --batch 4 --test-data " + p("d.safetensors")};
  std::set<std::string> keys;
  std::function<void(const nlohmann::json&)> collect = [&](const nlohmann::json& j) {
    if (j.is_object())
      for (auto it = j.begin(); it != j.end(); ++it) {
        keys.insert(it.key());
        collect(it.value());
      }
    else if (j.is_array())
      for (const auto& e : j) collect(e);
  };
  for (const std::string& args : runs) {
    const Result r = run(args + " --report " + p("doc.json"));
    ASSERT_EQ(r.code, 0) << args << "\n" << r.err;
    collect(nlohmann::json::parse(slurp(p("doc.json"))));
  }
  EXPECT_GT(keys.size(), 60u);
  for (const std::string& k : keys) EXPECT_NE(section.find("`" + k + "`"), std::string::npos) << "undocumented: " << k;
}
