// The command line end to end on small generated problems: fvp / solve / spectrum outputs equal the library
// calls bit for bit; every bad input gives one line on stderr naming the problem, a non-zero exit, and no
// output file.
#include "cli_fixture.h"

#include <natgrad/core/threads.h>
#include <natgrad/io/dataset_io.h>
#include <natgrad/io/model_spec_json.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/io/safetensors.h>
#include <natgrad/natural_gradient/memory_estimate.h>
#include <natgrad/natural_gradient/solve_natural_gradient.h>

#include <Eigen/Eigenvalues>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sys/stat.h>
#include <sys/wait.h>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;


TEST_F(Cli, FvpEqualsTheLibraryCall) {
  for (const std::string kind : {"exact", "mc", "empirical"}) {
    const Result r = run("fvp " + base + " --fisher " + kind + " --mc-samples 3 --seed 9 --damping 0.5 --vector " +
                         p("v.safetensors") + " --output " + p("fv.safetensors"));
    ASSERT_EQ(r.code, 0) << r.err;
    Loaded l = load();
    FisherOptions fo;
    fo.kind = fisher_kind_from_string(kind);
    fo.mc_samples = 3;
    fo.seed = 9;
    fo.damping = 0.5;
    FisherOperator<float> F(*l.model, l.theta, l.m.likelihood, l.data, fo);
    const Vec<float> v = load_parameters<float>(p("v.safetensors"), *l.model);
    const Vec<float> ref = apply(F, v);
    EXPECT_EQ(load_parameters<float>(p("fv.safetensors"), *l.model), ref) << kind;
    // The printed quadratic form includes the damping, and says so.
    EXPECT_NE(r.out.find("v^T (F + 0.5 I) v = "), std::string::npos) << r.out;
  }
}

TEST_F(Cli, GaussianAndBernoulliDataThroughTheCommandLine) {
  // The same network with a gaussian or bernoulli likelihood: F32 [N, C] targets from the safetensors file,
  // the product through the CLI equal to the library call bit for bit, and a solve that converges.
  for (const std::string lk : {"gaussian", "bernoulli"}) {
    SCOPED_TRACE(lk);
    std::string spec = kModel;
    spec.replace(spec.find("categorical"), std::string("categorical").size(), lk);
    std::ofstream(p(lk + ".json")) << spec;
    const ModelFile m = read_model_spec(p(lk + ".json"));
    ASSERT_EQ(m.likelihood, likelihood_from_string(lk));
    Network<float> model(m.spec);
    save_dataset(p(lk + ".safetensors"), random_dataset(model, 30, m.likelihood, 12), m.spec.input_shape);
    const std::string args = "--model " + p(lk + ".json") + " --weights " + p("w.safetensors") + " --data " +
                             p(lk + ".safetensors");
    for (const std::string kind : {"exact", "mc", "empirical"}) {
      const Result r = run("fvp " + args + " --fisher " + kind + " --seed 4 --vector " + p("v.safetensors") +
                           " --output " + p("fv_" + lk + ".safetensors"));
      ASSERT_EQ(r.code, 0) << r.err;
      const Dataset<float> data = load_dataset<float>(p(lk + ".safetensors"), m.spec.input_shape, m.likelihood, 4);
      ASSERT_EQ(data.targets.rows(), 4);
      FisherOptions fo;
      fo.kind = fisher_kind_from_string(kind);
      fo.seed = 4;
      FisherOperator<float> F(model, load_parameters<float>(p("w.safetensors"), model), m.likelihood, data, fo);
      EXPECT_EQ(load_parameters<float>(p("fv_" + lk + ".safetensors"), model),
                apply(F, load_parameters<float>(p("v.safetensors"), model))) << kind;
    }
    const Result r = run("solve " + args + " --damping 0.01");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("CG converged"), std::string::npos) << r.out;
  }
}

TEST_F(Cli, SolveEqualsTheLibraryCallAndWritesTheReport) {
  const Result r = run("solve " + base + " --damping 0.01 --cg-tol 1e-5 --curvature-batch 20 --spectrum 3 --output " +
                       p("d.safetensors.out") + " --save-gradient " + p("g.safetensors") + " --report " + p("report.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("CG converged"), std::string::npos) << r.out;
  Loaded l = load();
  NaturalGradientOptions opt;
  opt.fisher.damping = 0.01;
  opt.cg.relative_tolerance = 1e-5;
  opt.cg.max_iterations = 500;
  opt.curvature_batch = 20;
  opt.spectrum_top_k = 3;
  opt.spectrum.tolerance = 1e-8;
  opt.condition_number = true;
  const auto ref = solve_natural_gradient(*l.model, l.theta, l.m.likelihood, l.data, opt);
  EXPECT_EQ(load_parameters<float>(p("d.safetensors.out"), *l.model), ref.direction);
  EXPECT_EQ(load_parameters<float>(p("g.safetensors"), *l.model), ref.gradient);
  const auto j = nlohmann::json::parse(slurp(p("report.json")));
  for (const char* key : {"loss", "gradient_norm", "params", "samples", "cg", "spectrum", "timing_s"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["params"].get<Index>(), l.model->num_params());
  EXPECT_EQ(j["samples"].get<Index>(), 40);
  EXPECT_EQ(j["cg"]["iterations"].get<Index>(), ref.cg.iterations);
  EXPECT_TRUE(j["cg"]["converged"].get<bool>());
  EXPECT_EQ(j["cg"]["termination"].get<std::string>(), "converged");
  EXPECT_EQ(j["cg"]["residual_history"].size(), ref.cg.residual_history.size());
  EXPECT_DOUBLE_EQ(j["loss"].get<double>(), ref.loss);
  ASSERT_EQ(j["spectrum"]["eigenvalues"].size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(j["spectrum"]["eigenvalues"][i].get<double>(), ref.spectrum.eigenvalues[i]);
  EXPECT_GT(j["spectrum"]["matvecs"].get<Index>(), 0);
}

TEST_F(Cli, SolveHeaderReportAndThreads) {
  // Without --weights the header says the parameters are an initialization; a report without a spectrum has
  // no spectrum entry; the CG entry holds the true and the recursive residual; --threads 0 is all cores.
  const std::string no_weights = "--model " + p("model.json") + " --data " + p("d.safetensors");
  Result r = run("solve " + no_weights + " --seed 3 --threads 0 --report " + p("r0.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters: PyTorch-style initialization, seed 3"), std::string::npos) << r.out;
  auto j = nlohmann::json::parse(slurp(p("r0.json")));
  EXPECT_FALSE(j.contains("spectrum"));
  EXPECT_TRUE(j["cg"].contains("recursive_relative_residual"));
  EXPECT_LE(j["cg"]["relative_residual"].get<double>(), 1e-6);
  r = run("solve " + base + " --threads 3");
  ASSERT_EQ(r.code, 0) << r.err;
#ifdef NATGRAD_HAVE_MPI
  const std::string ranks = ", ranks: 1";  // (a build with MPI names the ranks, here one process)
#else
  const std::string ranks;
#endif
  EXPECT_NE(r.out.find("3 threads" + ranks + ", parameters: " + p("w.safetensors")), std::string::npos)
      << r.out;
}

TEST_F(Cli, WeightsInAnotherFloatTypeAreConvertedWithANote) {
  Loaded l = load();
  save_parameters(p("w64.safetensors"), *l.model, l.theta, DType::F64);
  const std::string args = "fvp --model " + p("model.json") + " --data " + p("d.safetensors") + " --vector " +
                           p("v.safetensors") + " --output " + p("fv64.safetensors") + " --weights ";
  // (without --quiet, which silences notes)
  const std::string loud = std::string(NATGRAD_CLI) + " " + args + p("w64.safetensors") + " 2> " + p("stderr") + " > /dev/null";
  ASSERT_EQ(std::system(loud.c_str()), 0);
  EXPECT_NE(slurp(p("stderr")).find("note: " + p("w64.safetensors") + ": converted F64 to float32"), std::string::npos)
      << slurp(p("stderr"));
  Result r = run(args + p("w64.safetensors"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(args + p("w.safetensors"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err.find("converted"), std::string::npos) << r.err;
}

// An allocation that fails although the estimate passed (here the address space is capped below what the
// 36.8M-parameter MLP needs) ends with a sentence naming what was being allocated, its size and the estimate,
// and writes nothing. (Not under AddressSanitizer, which needs a vast address space of its own.)
TEST_F(Cli, OutOfMemoryEndsWithASentenceAndNoOutput) {
#if defined(NATGRAD_SANITIZE)  // GCC and clang spell "under AddressSanitizer" differently
  GTEST_SKIP() << "AddressSanitizer build: an address-space limit would stop the sanitizer itself";
#endif
  std::ofstream(p("big.json")) << R"({"input_shape": [784], "layers": [
      {"type": "linear", "in_features": 784, "out_features": 4096}, {"type": "tanh"},
      {"type": "linear", "in_features": 4096, "out_features": 4096}, {"type": "tanh"},
      {"type": "linear", "in_features": 4096, "out_features": 4096}, {"type": "tanh"},
      {"type": "linear", "in_features": 4096, "out_features": 10}]})";
  Network<float> model(read_model_spec(p("big.json")).spec);
  save_dataset(p("big_data.safetensors"), random_dataset(model, 200, LikelihoodKind::categorical, 3), {784});
  const std::string out = p("oom.safetensors");
  const std::string cmd = "ulimit -v 800000; " + std::string(NATGRAD_CLI) + " solve --model " + p("big.json") +
                          " --data " + p("big_data.safetensors") + " --max-memory 100 --cg-max-iters 1 --quiet --output " +
                          out + " > " + p("stdout") + " 2> " + p("stderr");
  const int status = std::system(("bash -c '" + cmd + "'").c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  const std::string err = slurp(p("stderr"));
  EXPECT_NE(err.find("natgrad: error: out of memory"), std::string::npos) << err;
  EXPECT_NE(err.find("the estimate for the whole run was "), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_FALSE(exists(out));
}

TEST_F(Cli, SigtermStopsCgAndWritesTheBestIterate) {
  // A solve that cannot converge (λ = 0 on a rank-deficient F, a tolerance beyond reach, many iterations)
  // is stopped by SIGTERM: exit 143, the best iterate and a report saying "interrupted". timeout runs with
  // --foreground so that it signals natgrad once: without it, it sends SIGTERM to natgrad and then to its whole
  // process group, natgrad included, and when the first had been handled already the second was natgrad's
  // "second signal: quit now" (exit 143 with nothing written, in about one run of six here).
  const std::string out = p("interrupted.safetensors"), report = p("interrupted.json");
  std::remove(out.c_str());
  const std::string cmd = "timeout --foreground --preserve-status -s TERM 1.5 " + std::string(NATGRAD_CLI) + " solve " + base +
                          " --damping 0 --cg-tol 1e-15 --cg-max-iters 100000000 --quiet --output " + out +
                          " --report " + report + " > " + p("stdout") + " 2> " + p("stderr");
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 143) << slurp(p("stderr"));
  EXPECT_NE(slurp(p("stdout")).find("interrupted by SIGTERM"), std::string::npos) << slurp(p("stdout"));
  ASSERT_TRUE(exists(out));
  Loaded l = load();
  const Vec<float> d = load_parameters<float>(out, *l.model);
  EXPECT_TRUE(d.allFinite());
  EXPECT_GT(d.norm(), 0.0f);
  const auto j = nlohmann::json::parse(slurp(report));
  EXPECT_EQ(j["cg"]["termination"].get<std::string>(), "interrupted");
  EXPECT_GT(j["cg"]["iterations"].get<Index>(), 0);
}

TEST_F(Cli, SpectrumAndInfo) {
  const Result r = run("spectrum " + base + " --top 4 --report " + p("spec.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  Loaded l = load();
  FisherOperator<float> F(*l.model, l.theta, l.m.likelihood, l.data);
  SpectrumOptions so;
  so.num_eigenvalues = 4;
  so.tolerance = 1e-8;
  const SpectrumResult ref = top_eigenvalues(F, so);
  const auto j = nlohmann::json::parse(slurp(p("spec.json")));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(j["spectrum"]["eigenvalues"][i].get<double>(), ref.eigenvalues[i]);
  const Result info = run("info --model " + p("model.json") + " --weights " + p("w.safetensors") + " --batch 64");
  ASSERT_EQ(info.code, 0) << info.err;
  EXPECT_NE(info.out.find("total parameters: " + std::to_string(l.model->num_params())), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("memory for a solve at batch 64"), std::string::npos);
  EXPECT_NE(info.out.find("avgpool2d"), std::string::npos);
  // --ranks K: one rank's estimate, the library's estimate for its share of 64 / 3 samples (at most 22).
  const Result ranks = run("info --model " + p("model.json") + " --batch 64 --ranks 3 --threads 1");
  ASSERT_EQ(ranks.code, 0) << ranks.err;
  const MemoryEstimate share =
      estimate_solve_memory(l.m.spec, 22, 0, sizeof(float), FisherOptions(), 0, 1, false, l.m.likelihood, 3);
  EXPECT_NE(ranks.out.find("per rank of 3 (at most 22 samples each): " + share.report()), std::string::npos)
      << ranks.out << "\nexpected: " << share.report();
  EXPECT_EQ(run("info --model " + p("model.json") + " --batch 2 --ranks 3").code, 2);
}

TEST_F(Cli, ThreadsComeFromTheOptionElseOmpNumThreadsElseAllCores) {
  // (The header line names the count; `env -u` runs without OMP_NUM_THREADS whatever ctest's environment.)
  const std::string solve = " solve " + base + " --output " + p("t.safetensors");
  const Result env1 = run(solve, ("OMP_NUM_THREADS=1 " + std::string(NATGRAD_CLI)).c_str());
  ASSERT_EQ(env1.code, 0) << env1.err;
  EXPECT_NE(env1.out.find(", 1 threads"), std::string::npos) << env1.out;
  const Result option = run(solve + " --threads 3", ("OMP_NUM_THREADS=1 " + std::string(NATGRAD_CLI)).c_str());
  EXPECT_NE(option.out.find(", 3 threads"), std::string::npos) << option.out;
  const Result all = run(solve, ("env -u OMP_NUM_THREADS " + std::string(NATGRAD_CLI)).c_str());
  EXPECT_NE(all.out.find(", " + std::to_string(available_cores()) + " threads"), std::string::npos) << all.out;
}

TEST_F(Cli, DeflationGivesTheSameDirectionWithFewerProducts) {
  const std::string solve = "solve " + base + " --dtype float64 --cg-tol 1e-10 --damping 1e-2";
  const Result plain = run(solve + " --output " + p("plain.safetensors") + " --report " + p("plain.json"));
  const Result deflated =
      run(solve + " --deflate 4 --output " + p("deflated.safetensors") + " --report " + p("deflated.json"));
  ASSERT_EQ(plain.code, 0) << plain.err;
  ASSERT_EQ(deflated.code, 0) << deflated.err;
  EXPECT_NE(deflated.out.find("CG was deflated with the top-4 eigenpairs of F"), std::string::npos) << deflated.out;
  const auto jp = nlohmann::json::parse(slurp(p("plain.json"))), jd = nlohmann::json::parse(slurp(p("deflated.json")));
  EXPECT_EQ(jd["cg"]["deflated_eigenpairs"].get<Index>(), 4);
  EXPECT_EQ(jp["cg"]["deflated_eigenpairs"].get<Index>(), 0);
  EXPECT_LT(jd["cg"]["products"].get<Index>(), jp["cg"]["products"].get<Index>());
  Loaded l = load();
  Network<double> model(l.m.spec);
  const Vec<double> a = load_parameters<double>(p("plain.safetensors"), model);
  const Vec<double> b = load_parameters<double>(p("deflated.safetensors"), model);
  EXPECT_LE((a - b).norm() / a.norm(), 1e-7);
  EXPECT_EQ(run(solve + " --deflate 4 --preconditioner diagonal").code, 2);
  EXPECT_EQ(run(solve + " --deflate -1").code, 2);
}

// Every rule about a solve's options is NaturalGradientOptions::is_valid's: the command line turns its
// message into a usage error (exit 2, one line) with the options' names, before it loads anything (the data
// file of the first cases does not exist), and with the parameter count once the model is known.
TEST_F(Cli, SolveOptionRulesAreTheLibrarysInTheOptionsNames) {
  const Index P = load().model->num_params();
  const std::string missing = "solve --model " + p("model.json") + " --data " + p("missing.safetensors");
  const std::string solve = "solve " + base;
  struct Case {
    std::string args, message;
  };
  const Case cases[] = {
      {missing + " --deflate 4 --preconditioner diagonal",
       "error: --deflate 4 and --preconditioner diagonal do not combine: choose one"},
      {missing + " --damping 1e-1,1e-2 --preconditioner kfac",
       "error: several dampings (multi-shift CG) and --preconditioner kfac do not combine"},
      {missing + " --compare kfac", "error: --compare needs --spectrum > 0"},
      {missing + " --cg-tol 2", "error: --cg-tol must be in (0, 1), got 2"},
      {missing + " --cg-max-iters 0", "error: --cg-max-iters must be >= 1, got 0"},
      {missing + " --spectrum 2 --compare kfac,mc,kfac", "error: --compare lists kfac twice"},
      {missing + " --spectrum 2 --damping 0 --compare kfac", "error: --compare needs --damping > 0"},
      {solve + " --spectrum " + std::to_string(P),
       "error: --spectrum " + std::to_string(P) + " must be below the parameter count " + std::to_string(P)},
      {solve + " --deflate " + std::to_string(P + 5), "error: --deflate " + std::to_string(P + 5) +
                                                          " must be below the parameter count " +
                                                          std::to_string(P)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    const Result r = run(c.args + " --output " + p("rules.safetensors"));
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(exists(p("rules.safetensors")));
  }
}

TEST_F(Cli, SpectrumTraceEigenvectorsAndDampedConditionAgainstTheDenseFisher) {
  const Result r = run("spectrum " + base + " --dtype float64 --top 3 --trace --probes 400 --damping 1e-2 "
                       "--eigenvectors " + p("ev.safetensors") + " --report " + p("sr.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  Loaded l = load();
  Network<double> model(l.m.spec);
  const Vec<double> theta = l.theta.cast<double>();
  const Dataset<double> data = l.data.cast<double>();
  const Mat<double> Fd = test::dense_fisher(model, theta, data, l.m.likelihood, FisherKind::exact);
  Eigen::SelfAdjointEigenSolver<Mat<double>> es(Fd);
  const Index P = Fd.rows();
  const auto j = nlohmann::json::parse(slurp(p("sr.json")));
  // Hutchinson within 3 standard errors of the dense trace.
  const double trace = j["trace"]["estimate"].get<double>(), se = j["trace"]["standard_error"].get<double>();
  EXPECT_LE(std::abs(trace - Fd.trace()), 3 * se) << trace << " +- " << se << " vs " << Fd.trace();
  EXPECT_EQ(j["trace"]["products"].get<Index>(), 400);
  // Eigenvectors: [3, ...shape] per tensor, each the dense eigenvector up to sign.
  const SafetensorsFile f = SafetensorsFile::read(p("ev.safetensors"));
  for (Index i = 0; i < 3; ++i) {
    Vec<double> v(P);
    for (const NamedParam& np : model.named_params()) {
      ASSERT_EQ(f.info(np.name).shape.front(), 3);
      const std::vector<double> t = f.get<double>(np.name);
      for (Index e = 0; e < np.size; ++e) v[np.offset + e] = t[static_cast<std::size_t>(i * np.size + e)];
    }
    const Vec<double> ref = es.eigenvectors().col(P - 1 - i);
    EXPECT_GE(std::abs(v.dot(ref)), 1 - 1e-8) << "eigenvector " << i;
    EXPECT_NEAR(j["spectrum"]["eigenvalues"][i].get<double>(), es.eigenvalues()[P - 1 - i], 1e-9);
  }
  // The condition number of F + λI: λ_max + λ over λ (the softmax shift makes F singular).
  const double want = (es.eigenvalues()[P - 1] + 1e-2) / (std::max(es.eigenvalues()[0], 0.0) + 1e-2);
  EXPECT_NEAR(j["condition"]["condition_number"].get<double>(), want, 1e-8 * want);
  EXPECT_NE(r.out.find("trace of F:"), std::string::npos);
  EXPECT_EQ(run("spectrum " + base + " --trace --probes 1").code, 2);
}

// --trace with --per-layer takes Hutchinson's samples from the per-module probes: the same trace, bit for
// bit, as --trace alone, and no products beyond --per-layer's.
TEST_F(Cli, SpectrumTraceSharesThePerLayerProbes) {
  const std::string spectrum = "spectrum " + base + " --top 2 --probes 12 --report ";
  ASSERT_EQ(run(spectrum + p("t.json") + " --trace").code, 0);
  ASSERT_EQ(run(spectrum + p("l.json") + " --per-layer").code, 0);
  const Result both = run(spectrum + p("tl.json") + " --trace --per-layer");
  ASSERT_EQ(both.code, 0) << both.err;
  const auto t = nlohmann::json::parse(slurp(p("t.json"))), l = nlohmann::json::parse(slurp(p("l.json"))),
             tl = nlohmann::json::parse(slurp(p("tl.json")));
  EXPECT_EQ(tl["trace"]["estimate"].get<double>(), t["trace"]["estimate"].get<double>());
  EXPECT_EQ(tl["trace"]["standard_error"].get<double>(), t["trace"]["standard_error"].get<double>());
  EXPECT_TRUE(tl["trace"]["shared_with_per_layer"].get<bool>());
  EXPECT_EQ(tl["products"].get<Index>(), l["products"].get<Index>());
  EXPECT_EQ(t["trace"]["products"].get<Index>(), 12);
  EXPECT_EQ(tl["per_layer"], l["per_layer"]);
}

TEST_F(Cli, SpectrumPerLayerAgainstTheDenseDiagonalBlocks) {
  const Result r = run("spectrum " + base + " --dtype float64 --top 2 --per-layer --probes 400 --report " +
                       p("pl.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  Loaded l = load();
  Network<double> model(l.m.spec);
  const Vec<double> theta = l.theta.cast<double>();
  const Mat<double> Fd = test::dense_fisher(model, theta, l.data.cast<double>(), l.m.likelihood, FisherKind::exact);
  Eigen::SelfAdjointEigenSolver<Mat<double>> es(Fd);
  const Index P = Fd.rows();
  const auto j = nlohmann::json::parse(slurp(p("pl.json")));
  // The modules: each tensor's name up to its last dot, in parameter order.
  std::vector<std::string> modules;
  for (const NamedParam& np : model.named_params()) {
    const std::string m = np.name.substr(0, np.name.rfind('.'));
    if (modules.empty() || modules.back() != m) modules.push_back(m);
  }
  ASSERT_EQ(j["per_layer"].size(), modules.size());
  for (std::size_t k = 0; k < modules.size(); ++k) {
    const auto& m = j["per_layer"][k];
    EXPECT_EQ(m["module"].get<std::string>(), modules[k]);
    std::vector<Index> idx;
    for (const NamedParam& np : model.named_params())
      if (np.name.substr(0, np.name.rfind('.')) == modules[k])
        for (Index e = 0; e < np.size; ++e) idx.push_back(np.offset + e);
    Mat<double> block(idx.size(), idx.size());
    for (std::size_t a = 0; a < idx.size(); ++a)
      for (std::size_t b = 0; b < idx.size(); ++b) block(a, b) = Fd(idx[a], idx[b]);
    EXPECT_EQ(m["parameters"].get<Index>(), Index(idx.size()));
    const double top = Eigen::SelfAdjointEigenSolver<Mat<double>>(block).eigenvalues().maxCoeff();
    EXPECT_NEAR(m["top_eigenvalue"].get<double>(), top, 1e-8 * top) << modules[k];
    EXPECT_LE(std::abs(m["trace"].get<double>() - block.trace()), 3 * m["trace_standard_error"].get<double>())
        << modules[k] << ": " << m["trace"].get<double>() << " vs " << block.trace();
    for (Index e = 0; e < 2; ++e) {
      double mass = 0;
      for (Index i : idx) mass += es.eigenvectors()(i, P - 1 - e) * es.eigenvectors()(i, P - 1 - e);
      EXPECT_NEAR(m["eigenvector_mass"][e].get<double>(), mass, 1e-8) << modules[k] << " eigenvector " << e;
    }
  }
}

TEST_F(Cli, SpectrumDensityAgainstTheDenseEigenvalues) {
  Loaded l = load();
  Network<double> model(l.m.spec);
  const Vec<double> theta = l.theta.cast<double>();
  const Mat<double> Fd = test::dense_fisher(model, theta, l.data.cast<double>(), l.m.likelihood, FisherKind::exact);
  const Vec<double> ev = Eigen::SelfAdjointEigenSolver<Mat<double>>(Fd).eigenvalues();
  const Index P = Fd.rows();
  // As many Lanczos steps as parameters: every probe's quadrature resolves the whole spectrum.
  const Result r = run("spectrum " + base + " --dtype float64 --top 2 --density --probes 30 --lanczos-steps " +
                       std::to_string(P) + " --report " + p("den.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(slurp(p("den.json")))["density"];
  const auto nodes = j["nodes"].get<std::vector<double>>(), weights = j["weights"].get<std::vector<double>>();
  double sum = 0;
  for (double w : weights) sum += w;
  EXPECT_NEAR(sum, 1.0, 1e-12);
  // Wasserstein-1 distance between the quadrature and the dense eigenvalues, against the spectrum's width.
  std::vector<std::pair<double, double>> pts;
  for (std::size_t i = 0; i < nodes.size(); ++i) pts.push_back({nodes[i], weights[i]});
  for (Index i = 0; i < P; ++i) pts.push_back({ev[i], -1.0 / double(P)});
  std::sort(pts.begin(), pts.end());
  double cdf = 0, w1 = 0;
  for (std::size_t i = 0; i + 1 < pts.size(); ++i) {
    cdf += pts[i].second;
    w1 += std::abs(cdf) * (pts[i + 1].first - pts[i].first);
  }
  EXPECT_LT(w1, 0.02 * ev.maxCoeff()) << w1;
  // The mass at zero: the share of eigenvalues below 1e-4 λ_max, to the probes' statistical error.
  double zero = 0;
  for (Index i = 0; i < P; ++i) zero += ev[i] < 1e-4 * ev.maxCoeff() ? 1.0 / double(P) : 0.0;
  EXPECT_NEAR(j["mass_at_zero"].get<double>(), zero, 0.03);
  EXPECT_NEAR(j["mean_eigenvalue"].get<double>(), Fd.trace() / double(P),
              3 * j["mean_eigenvalue_standard_error"].get<double>());
  EXPECT_EQ(run("spectrum " + base + " --density --lanczos-steps 1").code, 2);
}

TEST_F(Cli, SolveNaturalGradientBinaryIsNatgradSolve) {
  const Result a = run(base + " --output " + p("a.safetensors"), SOLVE_NATURAL_GRADIENT);
  const Result b = run("solve " + base + " --output " + p("b.safetensors"));
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(slurp(p("a.safetensors")), slurp(p("b.safetensors")));
}

TEST_F(Cli, OutputsAreBitIdenticalForOneAndTwoThreads) {
#ifndef NATGRAD_HAVE_OPENMP
  GTEST_SKIP() << "built without OpenMP (NATGRAD_USE_OPENMP=OFF): one thread only, nothing to compare";
#endif
  // 300 samples: 10 chunks of 32 (5 for the curvature batch of 150) and several parameter tasks, so the
  // threads really split the work; every Fisher kind; solve, fvp and spectrum.
  {
    const ModelFile m = read_model_spec(p("model.json"));
    Network<float> model(m.spec);
    save_dataset(p("big.safetensors"), random_dataset(model, 300, LikelihoodKind::categorical, 41), m.spec.input_shape);
  }
  const std::string big = "--model " + p("model.json") + " --weights " + p("w.safetensors") + " --data " + p("big.safetensors");
  for (const std::string kind : {"exact", "mc", "empirical"}) {
    std::string outputs[2][4];
    for (int t = 1; t <= 2; ++t) {
      const std::string sfx = kind + std::to_string(t);
      const std::string common = big + " --fisher " + kind + " --mc-samples 2 --seed 3 --threads " + std::to_string(t);
      ASSERT_EQ(run("solve " + common + " --curvature-batch 150 --spectrum 3 --preconditioner diagonal --output " +
                    p("d" + sfx) + " --save-gradient " + p("g" + sfx) + " --report " + p("r" + sfx)).code, 0);
      ASSERT_EQ(run("fvp " + common + " --vector " + p("v.safetensors") + " --output " + p("f" + sfx)).code, 0);
      ASSERT_EQ(run("spectrum " + common + " --top 3 --report " + p("s" + sfx)).code, 0);
      const auto solve_report = nlohmann::json::parse(slurp(p("r" + sfx)));
      const auto spec_report = nlohmann::json::parse(slurp(p("s" + sfx)));
      outputs[t - 1][0] = slurp(p("d" + sfx)) + slurp(p("g" + sfx));
      outputs[t - 1][1] = slurp(p("f" + sfx));
      outputs[t - 1][2] = solve_report["spectrum"]["eigenvalues"].dump() + solve_report["cg"]["residual_history"].dump() +
                          solve_report["loss"].dump();
      outputs[t - 1][3] = spec_report["spectrum"]["eigenvalues"].dump();
    }
    for (int k = 0; k < 4; ++k) {
      EXPECT_FALSE(outputs[0][k].empty());
      EXPECT_EQ(outputs[0][k], outputs[1][k]) << kind << " output " << k;
    }
  }
}

TEST_F(Cli, NonFiniteForwardPassEndsWithoutOutput) {
  const ModelFile m = read_model_spec(p("model.json"));
  Network<float> model(m.spec);
  Vec<float> theta = init_parameters(model, 4);
  const NamedParam& w = model.named_params()[2];  // 4.weight, the first linear layer
  theta.segment(w.offset, w.size).setConstant(3e38f);
  save_parameters(p("overflow.safetensors"), model, theta, DType::F32);
  const std::string out = p("never2.safetensors");
  for (const std::string cmd : {"solve", "fvp", "spectrum"}) {
    const std::string extra = cmd == "fvp" ? " --vector " + p("v.safetensors") + " --output " + out :
                              cmd == "solve" ? " --output " + out : "";
    const Result r = run(cmd + " --model " + p("model.json") + " --weights " + p("overflow.safetensors") + " --data " +
                         p("d.safetensors") + extra);
    EXPECT_EQ(r.code, 1) << cmd;
    EXPECT_NE(r.err.find("the output of layer 4 (linear) is NaN or Inf"), std::string::npos) << cmd << ": " << r.err;
    EXPECT_FALSE(exists(out)) << cmd;
  }
}

TEST_F(Cli, HelpDocumentsEveryOptionWithItsDefault) {
  const Result r = run("solve --help");
  EXPECT_EQ(r.code, 0);
  for (const char* opt : {"--model", "--weights", "--data", "--fisher", "--mc-samples", "--seed", "--batch",
                          "--curvature-batch", "--damping", "--cg-tol", "--cg-max-iters", "--preconditioner", "--dtype",
                          "--threads", "--output", "--save-gradient", "--spectrum", "--report", "--quiet"})
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt;
  EXPECT_NE(r.out.find("1e-3"), std::string::npos);
}

TEST_F(Cli, BadInputEndsWithOneLineAndNoOutput) {
  const std::string out = p("never.safetensors");
  std::ofstream(p("empty.safetensors"));
  std::ofstream(p("bad.json")) << "{\"input_shape\": [1, 5, 5], \"layers\": [";
  std::ofstream(p("chain.json")) << R"({"input_shape": [3], "layers": [{"type": "linear", "in_features": 4, "out_features": 2}]})";
  std::ofstream(p("unknown.json")) << R"({"input_shape": [3], "layers": [{"type": "lstm"}]})";
  std::ofstream(p("lik.json")) << R"({"input_shape": [3], "likelihood": "poisson", "layers": []})";
  std::ofstream(p("cycle.json")) << R"({"input_shape": [3], "layers": [
    {"type": "linear", "id": "a", "in_features": 3, "out_features": 3, "inputs": ["b"]},
    {"type": "linear", "id": "b", "in_features": 3, "out_features": 3, "inputs": ["a"]}]})";
  std::ofstream(p("unused.json")) << R"({"input_shape": [1, 5, 5], "layers": [
    {"type": "flatten", "id": "f"}, {"type": "tanh", "id": "dead", "inputs": ["f"]},
    {"type": "linear", "id": "out", "in_features": 25, "out_features": 4, "inputs": ["f"]}]})";
  std::ofstream(p("catshape.json")) << R"({"input_shape": [1, 5, 5], "layers": [
    {"type": "flatten", "id": "f"}, {"type": "linear", "id": "a", "in_features": 25, "out_features": 4},
    {"type": "cat", "id": "c", "inputs": ["a", "input"]},
    {"type": "linear", "id": "out", "in_features": 29, "out_features": 4}]})";
  {
    std::string bytes = slurp(p("w.safetensors"));
    std::ofstream(p("trunc.safetensors"), std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  const std::string model = " --model " + p("model.json"), data = " --data " + p("d.safetensors"),
                    weights = " --weights " + p("w.safetensors");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"solve" + model + data + " --weights " + p("missing.safetensors"), "missing.safetensors: cannot open file"},
      {"solve" + model + data + " --weights " + p("empty.safetensors"), "empty.safetensors: file is 0 bytes"},
      {"solve" + model + data + " --weights " + p("trunc.safetensors"), "trunc.safetensors"},
      {"solve" + model + data + " --weights " + p("v.safetensors") + " --damping -1", "--damping must be a finite number >= 0"},
      {"solve" + model + data + weights + " --damping abc", "--damping"},
      {"solve" + model + data + weights + " --fisher bogus", "unknown Fisher kind \"bogus\""},
      {"solve" + model + data + weights + " --frobnicate", "frobnicate"},
      {"solve" + model + data + weights + " --curvature-batch 100", "--curvature-batch 100 exceeds the batch of 40"},
      {"solve" + model + data + weights + " --batch 0", "--batch must be >= 1, got 0"},
      {"fvp" + model + data + weights + " --vector " + p("v.safetensors") + " --batch -3 --output " + out,
       "--batch must be >= 1, got -3"},
      {"solve" + model + data + weights + " --batch 1000", "batch 1000 exceeds the 40 samples"},
      {"solve --model " + p("bad.json") + data, "bad.json: malformed JSON"},
      {"solve --model " + p("chain.json") + data, "linear expects input shape [4] but receives [3]"},
      {"solve --model " + p("unknown.json") + data, "unknown layer type \"lstm\""},
      {"solve --model " + p("lik.json") + data, "unknown likelihood \"poisson\""},
      {"solve --model " + p("cycle.json") + data, "cycle.json: layer 0 \"a\" (linear): is on a cycle"},
      {"solve --model " + p("unused.json") + data, "unused.json: layer 1 \"dead\" (tanh): its output is never used"},
      {"solve --model " + p("catshape.json") + data,
       "catshape.json: layer 2 \"c\" (cat): cat: operand 1 has shape [1, 5, 5], which differs from operand 0's [4]"},
      {"solve" + model + " --data " + p("nope.safetensors") + weights, "nope.safetensors: no such file"},
      {"solve" + model + weights, "--data is required"},
      {"solve" + model + data + weights + " --max-memory 0.00001", "--max-memory allows 9.8 KiB (parameter vectors "},
      {"fvp" + model + data + weights + " --vector " + p("missing-v.safetensors") + " --output " + out,
       "missing-v.safetensors: cannot open file"},
      {"fvp" + model + data + weights + " --vector " + p("v.safetensors"), "--output is required"},
      {"fvp" + model + data + weights + " --vector " + p("w.safetensors") + " --output " + out + " --dtype float16",
       "--dtype must be float32 or float64"},
      {"spectrum" + model + data + weights + " --top 0", "--top must be >= 1"},
      {"solve" + model + data + weights + " --threads -1", "--threads must be >= 1, or 0 for all cores; got -1"},
      {"fvp" + model + data + weights + " --vector " + p("v.safetensors") + " --output " + out + " --cg-tol 1e-3",
       "--cg-tol is not an option of `natgrad fvp` (it is one of `natgrad solve`)"},
      {"fvp" + model + data + weights + " --vector " + p("v.safetensors") + " --output " + out + " --curvature-batch 5",
       "--curvature-batch is not an option of `natgrad fvp`"},
      {"spectrum" + model + data + weights + " --cg-max-iters 3", "--cg-max-iters is not an option of `natgrad spectrum`"},
      {"spectrum" + model + data + weights + " --preconditioner diagonal",
       "--preconditioner is not an option of `natgrad spectrum`"},
  };
  for (const auto& [args0, expect] : cases) {
    // Every solve and fvp case names an output, so "no output file" is checked where one was asked for.
    const bool wants_output = args0.rfind("spectrum", 0) != 0 && expect.find("--output is required") == std::string::npos &&
                              args0.find("--output") == std::string::npos;
    const std::string args = wants_output ? args0 + " --output " + out : args0;
    const Result r = run(args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.err.find(expect), std::string::npos) << args << "\nstderr: " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << "\nstderr: " << r.err;
    EXPECT_FALSE(exists(out)) << args;
  }
}

// A chain of all eleven chain layer types through the command line (tests/data/chain_v1: conv2d with a
// rectangular kernel and without bias, relu, maxpool2d, leaky_relu, avgpool2d with stride 1, flatten, linear
// with and without bias, tanh, gelu, softplus, sigmoid; 50 CSV samples, 5 classes), in float32 and float64,
// against references formed here in double from the forward pass alone: the gradient by central differences
// of the loss formula, F = 1/N Σ J_nᵀ H_n J_n from the finite-difference Jacobian and the formulas H_n
// (Monte-Carlo labels from the documented key), and the damped direction by an Eigen solve.
TEST(CliChain, OutputsMatchDenseReferences) {
  const std::string data = std::string(NATGRAD_TEST_DATA) + "/chain_v1/",
                    out = make_temp_dir("natgrad_chain") + "/";
  const ModelFile m = read_model_spec(data + "model.json");
  const Network<double> model(m.spec);
  // Parameters that float holds exactly, so both precisions run at the reference's point.
  const Vec<double> theta = init_parameters(Network<float>(m.spec), 3).cast<double>();
  save_parameters(out + "w.safetensors", model, theta, DType::F64);
  const Dataset<double> d =
      load_dataset<double>(data + "data.csv", m.spec.input_shape, m.likelihood, model.output_size());
  const Index N = d.size(), C = model.output_size(), P = model.num_params();
  ASSERT_EQ(N, 50);

  const Mat<double> J = jacobian_by_finite_differences(model, theta, d.inputs);
  const Mat<double> Z = model.predict(theta.data(), d.inputs);
  Mat<double> F = Mat<double>::Zero(P, P), Femp = F, Fmc = F;
  for (Index n = 0; n < N; ++n) {
    const Mat<double> Jn = J.middleRows(n * C, C);
    const Vec<double> zn = Z.col(n);
    F += Jn.transpose() * dense_output_fisher(m.likelihood, FisherKind::exact, zn, d, n) * Jn / double(N);
    Femp +=
        Jn.transpose() * dense_output_fisher(m.likelihood, FisherKind::empirical, zn, d, n) * Jn / double(N);
    Fmc += Jn.transpose() * mc_output_fisher(m.likelihood, zn, /*seed=*/3, n, 2) * Jn / double(N);
  }
  const Vec<double> g = gradient_by_finite_differences(
      [&](const Vec<double>& t) { return categorical_nll(model.predict(t.data(), d.inputs), d.labels); },
      theta);
  const Mat<double> I = Mat<double>::Identity(P, P);

  const std::string common = " --model " + data + "model.json --weights " + out + "w.safetensors --data " +
                             data + "data.csv --seed 3 --quiet";
  auto natgrad = [&](const std::string& args) {
    const int status = std::system((std::string(NATGRAD_CLI) + " " + args + common + " > /dev/null").c_str());
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  };
  auto read = [&](const std::string& name) {
    return load_parameters<double>(out + name + ".safetensors", model);
  };
  // ‖(F + λI) x − b‖ / ‖b‖ with the dense F: what CG's tolerance bounds, whatever F's conditioning. (b is the
  // gradient the solve wrote, checked against the finite differences on its own: their error, ~1e-8 at the
  // kinks of relu and max-pool, would otherwise swamp float64's residual.)
  auto residual = [&](const Vec<double>& x, double lambda, const Vec<double>& b) {
    return ((F + lambda * I) * x - b).norm() / b.norm();
  };

  // float32 and float64 solves: the gradient, and the direction's residual and error.
  ASSERT_TRUE(natgrad("solve --damping 0.01 --cg-tol 1e-6 --cg-max-iters 5000 --threads 2 --output " + out +
                      "d_f32.safetensors --save-gradient " + out + "g_f32.safetensors"));
  ASSERT_TRUE(natgrad(
      "solve --damping 0.01 --cg-tol 1e-12 --cg-max-iters 5000 --dtype float64 --threads 2 --output " + out +
      "d_f64.safetensors --save-gradient " + out + "g_f64.safetensors"));
  const Vec<double> g32 = read("g_f32"), g64 = read("g_f64");
  EXPECT_LT(rel_err_vec(g32, g), 1e-5);
  EXPECT_LT(rel_err_vec(g64, g), 1e-6);
  EXPECT_LT(residual(read("d_f32"), 0.01, g32), 1e-5);
  EXPECT_LT(residual(read("d_f64"), 0.01, g64), 1e-8);
  EXPECT_LT(rel_err_vec(read("d_f64"), Vec<double>((F + 0.01 * I).llt().solve(g64))), 1e-6);
  // Products: the Monte-Carlo Fisher (2 labels per sample) in float32, the empirical one in float64.
  ASSERT_TRUE(natgrad("fvp --damping 0.01 --fisher mc --mc-samples 2 --vector " + out +
                      "g_f32.safetensors --output " + out + "fv_mc_f32.safetensors"));
  ASSERT_TRUE(natgrad("fvp --fisher empirical --dtype float64 --vector " + out +
                      "g_f64.safetensors --output " + out + "fv_emp_f64.safetensors"));
  EXPECT_LT(rel_err_vec(read("fv_mc_f32"), Vec<double>((Fmc + 0.01 * I) * read("g_f32"))), 1e-5);
  EXPECT_LT(rel_err_vec(read("fv_emp_f64"), Vec<double>(Femp * read("g_f64"))), 1e-8);
  // CG with the diagonal preconditioner, one thread.
  ASSERT_TRUE(
      natgrad("solve --damping 0.1 --cg-tol 1e-6 --cg-max-iters 5000 --preconditioner diagonal --threads 1 "
              "--output " +
              out + "d_diag_f32.safetensors"));
  EXPECT_LT(residual(read("d_diag_f32"), 0.1, g32), 1e-5);
  EXPECT_LT(rel_err_vec(read("d_diag_f32"), Vec<double>((F + 0.1 * I).llt().solve(g32))), 1e-4);
}

// A graph model with batch norm and one with an embedding through the command line: the buffers come from the
// weights file, token indices from I64 inputs, and their bad inputs end with one line and no output.
TEST(CliGraph, BuffersTokensAndTheirBadInputs) {
  const std::string d = make_temp_dir("natgrad_cli_graph") + "/";
  std::ofstream(d + "bn.json") << R"({"input_shape": [2, 4, 4], "likelihood": "categorical", "layers": [
    {"type": "conv2d", "name": "conv", "in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": "same"},
    {"type": "batch_norm", "name": "bn", "num_features": 3},
    {"type": "relu", "id": "r", "inputs": ["bn"]},
    {"type": "add", "id": "res", "inputs": ["r", "bn"]},
    {"type": "global_avgpool", "id": "gap", "inputs": ["res"]},
    {"type": "linear", "name": "fc", "in_features": 3, "out_features": 4, "inputs": ["gap"]}]})";
  const ModelFile m = read_model_spec(d + "bn.json");
  Network<float> model(m.spec);
  const Vec<float> theta = init_parameters(model, 3);
  const Dataset<float> data = random_dataset(model, 20, LikelihoodKind::categorical, 4);
  save_dataset(d + "d.safetensors", data, m.spec.input_shape);
  // A state_dict: parameters, running statistics (F64 here), num_batches_tracked (I64, a 0-d tensor).
  auto write_weights = [&](const std::string& path, const std::vector<double>& var, bool with_var) {
    std::vector<TensorView> views;
    for (const NamedParam& np : model.named_params())
      views.push_back({np.name, DType::F32, std::vector<int64_t>(np.shape.begin(), np.shape.end()), theta.data() + np.offset});
    static const std::vector<double> mean{0.1, -0.2, 0.3};
    static const int64_t tracked = 7;
    views.push_back({"bn.running_mean", DType::F64, {3}, mean.data()});
    if (with_var) views.push_back({"bn.running_var", DType::F64, {3}, var.data()});
    views.push_back({"bn.num_batches_tracked", DType::I64, {}, &tracked});
    write_safetensors(path, views);
  };
  const std::vector<double> var{0.5, 2.0, 1.5}, negative{0.5, -2.0, 1.5};
  write_weights(d + "w.safetensors", var, true);
  write_weights(d + "novar.safetensors", var, false);
  write_weights(d + "negvar.safetensors", negative, true);
  const std::string base = "--model " + d + "bn.json --data " + d + "d.safetensors --quiet";
  const std::string cli = std::string(NATGRAD_CLI) + " ";
  auto run_cli = [&](const std::string& args, std::string* err) {
    const int status = std::system((cli + args + " > " + d + "out 2> " + d + "err").c_str());
    *err = slurp(d + "err");
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  std::string err;
  ASSERT_EQ(run_cli("solve " + base + " --weights " + d + "w.safetensors --output " + d + "dir.safetensors", &err), 0) << err;
  // The direction holds the parameters only, under their names.
  const SafetensorsFile dir = SafetensorsFile::read(d + "dir.safetensors");
  EXPECT_EQ(dir.names().size(), model.named_params().size());
  EXPECT_FALSE(dir.contains("bn.running_mean"));
  // The running statistics were used: the solve differs from one with PyTorch's default statistics.
  ASSERT_EQ(run_cli("solve " + base + " --seed 3 --output " + d + "dir0.safetensors", &err), 0) << err;
  EXPECT_NE(slurp(d + "dir.safetensors"), slurp(d + "dir0.safetensors"));

  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--weights " + d + "novar.safetensors", "novar.safetensors: missing buffer \"bn.running_var\" of shape [3]"},
      {"--weights " + d + "negvar.safetensors", "negvar.safetensors: buffer bn.running_var: entry 1 is a negative variance"},
  };
  for (const auto& [args, expect] : cases) {
    const std::string out = d + "never.safetensors";
    EXPECT_NE(run_cli("solve " + base + " " + args + " --output " + out, &err), 0);
    EXPECT_NE(err.find(expect), std::string::npos) << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    EXPECT_FALSE(exists(out));
  }

  // Tokens: I64 inputs [N, 4] into an embedding; an index out of range names the file, the sample, the position.
  std::ofstream(d + "tok.json") << R"({"input_shape": [4], "likelihood": "categorical", "layers": [
    {"type": "embedding", "name": "tok", "num_embeddings": 6, "embedding_dim": 2},
    {"type": "flatten"}, {"type": "linear", "in_features": 8, "out_features": 3}]})";
  std::vector<int64_t> tokens(5 * 4), labels{0, 1, 2, 0, 1};
  for (std::size_t k = 0; k < tokens.size(); ++k) tokens[k] = int64_t(k % 6);
  write_safetensors(d + "tok.safetensors", {{"inputs", DType::I64, {5, 4}, tokens.data()}, {"targets", DType::I64, {5}, labels.data()}});
  tokens[2 * 4 + 3] = 6;
  write_safetensors(d + "tok_bad.safetensors", {{"inputs", DType::I64, {5, 4}, tokens.data()}, {"targets", DType::I64, {5}, labels.data()}});
  ASSERT_EQ(run_cli("solve --model " + d + "tok.json --data " + d + "tok.safetensors --quiet --output " + d + "t.safetensors", &err), 0) << err;
  EXPECT_NE(run_cli("solve --model " + d + "tok.json --data " + d + "tok_bad.safetensors --quiet --output " + d + "t2.safetensors", &err), 0);
  EXPECT_NE(err.find("tok_bad.safetensors: node \"tok\" (embedding): sample 2, position 3: token index 6 is not an "
                     "integer in [0, 6)"), std::string::npos) << err;
  EXPECT_FALSE(exists(d + "t2.safetensors"));

  // info prints the graph: node, op, inputs, output shape.
  const int status = std::system((cli + "info --model " + d + "bn.json --weights " + d + "w.safetensors > " + d + "info").c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  const std::string info = slurp(d + "info");
  EXPECT_NE(info.find("  res  add            r, bn  [3, 4, 4]"), std::string::npos) << info;
  EXPECT_NE(info.find("total parameters: 79 in 6 tensors; 2 buffers"), std::string::npos) << info;
}

// A byte-level language model on a text file (--context T): windows of T + 1 bytes, a prediction at every
// position. The windows are the ones the documentation describes (checked through the library's loader), a
// solve runs, and a text shorter than one window or a model without T positions is refused.
TEST(CliText, ByteWindowsOfATextFile) {
  const std::string d = make_temp_dir("natgrad_cli_text") + "/";
  std::ofstream(d + "lm.json") << R"({"input_shape": [8], "likelihood": "categorical", "layers": [
    {"type": "embedding", "name": "tok", "num_embeddings": 256, "embedding_dim": 4},
    {"type": "layer_norm", "name": "ln", "normalized_shape": [4]},
    {"type": "linear", "name": "head", "in_features": 4, "out_features": 256}]})";
  const std::string text = "It was the best of times, it was the worst of times, it was the age of wisdom.\n";
  std::ofstream(d + "corpus.txt") << text;
  std::ofstream(d + "short.txt") << "tiny";
  const ModelFile m = read_model_spec(d + "lm.json");
  const Dataset<double> data =
      load_dataset<double>(d + "corpus.txt", m.spec.input_shape, m.likelihood, 256, Split::train, 0, 8, 8);
  ASSERT_EQ(data.size(), Index(text.size() / 9));  // non-overlapping windows of 9 bytes
  for (Index w = 0; w < data.size(); ++w)
    for (Index t = 0; t < 8; ++t) {
      EXPECT_EQ(data.inputs(t, w), double(static_cast<unsigned char>(text[static_cast<std::size_t>(w * 9 + t)])));
      EXPECT_EQ(data.labels[static_cast<std::size_t>(w * 8 + t)], static_cast<unsigned char>(text[static_cast<std::size_t>(w * 9 + t + 1)]));
    }
  const std::string cli = std::string(NATGRAD_CLI) + " ";
  auto run_cli = [&](const std::string& args, std::string* err) {
    const int status = std::system((cli + args + " --quiet > " + d + "out 2> " + d + "err").c_str());
    *err = slurp(d + "err");
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  std::string err;
  ASSERT_EQ(run_cli("solve --model " + d + "lm.json --data " + d + "corpus.txt --context 8 --output " + d +
                        "dir.safetensors --report " + d + "r.json", &err), 0) << err;
  const auto report = nlohmann::json::parse(slurp(d + "r.json"));
  EXPECT_EQ(report["samples"].get<Index>(), Index(text.size() / 9));
  EXPECT_EQ(report["positions"].get<Index>(), 8);
  EXPECT_NE(run_cli("solve --model " + d + "lm.json --data " + d + "short.txt --context 8 --output " + d + "x.safetensors", &err), 0);
  EXPECT_NE(err.find("short.txt: holds 4 bytes, shorter than one window of --context + 1 = 9 bytes"), std::string::npos) << err;
  EXPECT_NE(run_cli("solve --model " + d + "lm.json --data " + d + "corpus.txt --context 4 --output " + d + "x.safetensors", &err), 0);
  EXPECT_NE(err.find("--context 4 needs a model whose output is [4, 256]"), std::string::npos) << err;
  EXPECT_NE(run_cli("solve --model " + d + "lm.json --data " + d + "corpus.txt --output " + d + "x.safetensors", &err), 0);
  EXPECT_NE(err.find("a text file needs --context T"), std::string::npos) << err;
  EXPECT_FALSE(exists(d + "x.safetensors"));
}
