// Signals and progress through the command line: SIGINT and SIGTERM stop solve, spectrum and profile at the
// next chunk of work, the commands say so, write what was complete and exit 130 / 143; a second SIGINT ends
// the process at once; every long phase prints progress. Each signal is sent once the phase it should
// interrupt has said (on stderr) that it is running, not after a fixed sleep.
#include "cli_fixture.h"

#include <natgrad/io/parameters_io.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <regex>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A command run in the background with its stdout and stderr in files (no --quiet: progress is watched).
class Background {
 public:
  Background(const std::string& args, const std::string& tag) : out_(p(tag + ".out")), err_(p(tag + ".err")) {
    pid_ = ::fork();
    if (pid_ == 0) {
      const int o = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = ::open(err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(o, 1);
      ::dup2(e, 2);
      ::execl("/bin/sh", "sh", "-c", ("exec " + std::string(NATGRAD_CLI) + " " + args).c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0 && !done_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  // Waits (up to `seconds`) until stderr holds `text` `count` times; false if the process ended first.
  bool wait_for(const std::string& text, int count = 1, double seconds = 120) {
    return wait_until([&](const std::string& e) {
      int n = 0;
      for (std::size_t at = e.find(text); at != std::string::npos; at = e.find(text, at + 1)) ++n;
      return n >= count;
    }, seconds);
  }
  // Waits until stderr matches `pattern`.
  bool wait_for_match(const std::string& pattern, double seconds = 120) {
    const std::regex re(pattern);
    return wait_until([&](const std::string& e) { return std::regex_search(e, re); }, seconds);
  }
  template <typename Test>
  bool wait_until(Test test, double seconds) {
    const auto t0 = Clock::now();
    while (since(t0) < seconds) {
      if (test(slurp(err_))) return true;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        done_ = true;
        code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  void signal(int sig) const { ::kill(pid_, sig); }
  // The exit status, waiting up to `seconds` (-2 if it is still running then).
  int finish(double seconds) {
    const auto t0 = Clock::now();
    while (!done_ && since(t0) < seconds) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        done_ = true;
        code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    return done_ ? code_ : -2;
  }
  std::string out() const { return slurp(out_); }
  std::string err() const { return slurp(err_); }

 private:
  std::string out_, err_;
  pid_t pid_ = -1;
  bool done_ = false;
  int code_ = -1;
};

}  // namespace

// SIGINT during SLQ: Lanczos' eigenvalues, the eigenvectors and the density of the probes completed are
// written; the per-module spectrum that was not reached is named as skipped; exit 130.
TEST_F(Cli, SigintDuringTheDensityWritesWhatIsCompleteAndExits130) {
  const std::string report = p("sig_density.json"), vectors = p("sig_ev.safetensors");
  // 10^6 probes of up to 136 products each: hours of work without the signal.
  Background run("spectrum " + base + " --top 2 --density --probes 1000000 --lanczos-steps 200 --per-layer --report " +
                     report + " --eigenvectors " + vectors,
                 "sig_density");
  ASSERT_TRUE(run.wait_for_match("slq: .* [1-9][0-9]* of 1000000 probes done")) << run.err();
  const auto t0 = Clock::now();
  run.signal(SIGINT);
  const int code = run.finish(30);
  const double secs = since(t0);
  ASSERT_EQ(code, 130) << run.err();
  EXPECT_LT(secs, 10.0) << "stopped " << secs << " s after the signal";
  EXPECT_NE(run.err().find("interrupt received: stopping at the next chunk; press Ctrl-C again to quit now"),
            std::string::npos) << run.err();
  const std::string out = run.out();
  EXPECT_NE(out.find("interrupted by SIGINT: wrote what was complete; skipped the per-module spectrum"),
            std::string::npos) << out;
  EXPECT_NE(out.find("of 1000000 probes x"), std::string::npos) << out;
  const auto j = nlohmann::json::parse(slurp(report));
  EXPECT_EQ(j["interrupted"]["signal"].get<std::string>(), "SIGINT");
  EXPECT_EQ(j["spectrum"]["eigenvalues"].size(), 2u);
  const Index probes = j["density"]["probes"].get<Index>();
  EXPECT_GE(probes, 1);
  EXPECT_LT(probes, 1000000);
  double sum = 0;
  for (double w : j["density"]["weights"].get<std::vector<double>>()) sum += w;
  EXPECT_NEAR(sum, 1.0, 1e-9);  // the probes completed, each whole
  EXPECT_FALSE(j.contains("per_layer"));
  EXPECT_TRUE(exists(vectors));
}

// SIGTERM during the block traces of --per-layer: the traces of the probes done, the blocks' top eigenvalues
// named as skipped; exit 143.
TEST_F(Cli, SigtermDuringThePerModuleTracesKeepsTheProbesDone) {
  const std::string report = p("sig_layer.json");
  Background run("spectrum " + base + " --top 2 --per-layer --probes 100000000 --report " + report, "sig_layer");
  ASSERT_TRUE(run.wait_for("block trace: ", 2)) << run.err();
  run.signal(SIGTERM);
  ASSERT_EQ(run.finish(30), 143) << run.err();
  EXPECT_NE(run.err().find("SIGTERM received: stopping at the next chunk"), std::string::npos) << run.err();
  const std::string out = run.out();
  EXPECT_NE(out.find("skipped the top eigenvalue of 3 of 3 module blocks"), std::string::npos) << out;
  const auto j = nlohmann::json::parse(slurp(report));
  ASSERT_EQ(j["per_layer"].size(), 3u);
  for (const auto& m : j["per_layer"]) {
    EXPECT_TRUE(m["top_eigenvalue"].is_null());
    EXPECT_TRUE(m["trace"].is_number());
  }
  EXPECT_GE(j["per_layer_trace_products"].get<Index>(), 2);
  EXPECT_LT(j["per_layer_trace_products"].get<Index>(), 100000000);
}

// SIGINT during CG: the acknowledgement on stderr, "CG interrupted" (the report's word) on stdout, the
// current iterate written.
TEST_F(Cli, SigintDuringCgWritesTheIterateAndSaysInterruptedEverywhere) {
  const std::string out = p("sig_cg.safetensors"), report = p("sig_cg.json");
  Background run("solve " + base + " --damping 0 --cg-tol 1e-15 --cg-max-iters 100000000 --output " + out +
                     " --report " + report,
                 "sig_cg");
  ASSERT_TRUE(run.wait_for("cg ", 4)) << run.err();  // past the first iterations' lines
  run.signal(SIGINT);
  ASSERT_EQ(run.finish(30), 130) << run.err();
  EXPECT_NE(run.err().find("interrupt received: stopping at the next chunk"), std::string::npos) << run.err();
  const std::string stdout_text = run.out();
  EXPECT_NE(stdout_text.find("CG interrupted: "), std::string::npos) << stdout_text;
  EXPECT_EQ(stdout_text.find("user_stop"), std::string::npos) << stdout_text;
  EXPECT_NE(stdout_text.find("interrupted by SIGINT at CG iteration"), std::string::npos) << stdout_text;
  const auto j = nlohmann::json::parse(slurp(report));
  EXPECT_EQ(j["cg"]["termination"].get<std::string>(), "interrupted");
  Loaded l = load();
  EXPECT_TRUE(load_parameters<float>(out, *l.model).allFinite());
}

// A second SIGINT while the first waits for the next chunk ends the process at once with 130. (The wait here:
// the model spec is a FIFO nobody writes, so reading it blocks, as a long phase without chunks would.)
TEST_F(Cli, ASecondSigintQuitsAtOnce) {
  const std::string fifo = p("blocked.json");
  std::remove(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  Background run("spectrum --model " + fifo + " --data " + p("d.safetensors") + " --report " + p("sig_fifo.json"),
                 "sig_fifo");
  // Signal only once the command has opened the FIFO (its handlers are installed by then; an MPI build's
  // start-up can take longer than any fixed wait): a non-blocking open for writing succeeds only when a reader
  // has it open. The writer then stays open without writing, so the command's read still blocks.
  int writer = -1;
  for (int i = 0; i < 3000 && writer < 0; ++i) {
    writer = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (writer < 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GE(writer, 0) << "the command never opened the model file";
  run.signal(SIGINT);
  ASSERT_TRUE(run.wait_for("interrupt received", 1, 30)) << run.err();
  EXPECT_EQ(run.finish(0.5), -2);  // the first signal alone does not end a wait that has no chunks
  run.signal(SIGINT);
  EXPECT_EQ(run.finish(10), 130) << run.err();
  EXPECT_NE(run.err().find("second interrupt: quitting now"), std::string::npos) << run.err();
  EXPECT_FALSE(exists(p("sig_fifo.json")));
  ::close(writer);
  std::remove(fifo.c_str());
}

// One SIGINT during profile's products: the profile of the products timed before it.
TEST_F(Cli, SigintDuringProfileReportsTheProductsTimed) {
  const std::string report = p("sig_profile2.json");
  Background run("profile " + base + " --products 100000000 --report " + report, "sig_profile2");
  ASSERT_TRUE(run.wait_for("profile: ", 2)) << run.err();  // 2 s into the timed products
  run.signal(SIGINT);
  ASSERT_EQ(run.finish(30), 130) << run.err();
  EXPECT_NE(run.out().find("interrupted by SIGINT after "), std::string::npos) << run.out();
  const auto j = nlohmann::json::parse(slurp(report));
  EXPECT_GE(j["products"].get<Index>(), 3);
  EXPECT_EQ(j["interrupted"]["signal"].get<std::string>(), "SIGINT");
}

// Every long phase says it is running, and the phases whose work is known give the time left.
TEST_F(Cli, EveryLongPhasePrintsProgress) {
  Background a("spectrum " + base + " --top 2 --trace --density --probes 6", "progress_a");
  ASSERT_EQ(a.finish(120), 0) << a.err();
  const std::string err = a.err();
  for (const char* phase : {"lanczos: ", "hutchinson: ", "slq: "}) EXPECT_NE(err.find(phase), std::string::npos) << phase << "\n" << err;
  EXPECT_NE(err.find("hutchinson: 1 of 6 products, 1 of 6 probes done"), std::string::npos) << err;
  EXPECT_NE(err.find("slq: 1 of "), std::string::npos) << err;
  Background b("spectrum " + base + " --top 2 --per-layer --probes 6", "progress_b");
  ASSERT_EQ(b.finish(120), 0) << b.err();
  for (const char* phase : {"block trace: 1 of 6 products", "block lanczos: 1 products, 0 of 3 blocks done"})
    EXPECT_NE(b.err().find(phase), std::string::npos) << phase << "\n" << b.err();
  // A phase that runs longer than the progress interval reports again, with an estimate of the time left.
  Background c("spectrum " + base + " --top 2 --density --probes 1000000 --lanczos-steps 200", "progress_c");
  ASSERT_TRUE(c.wait_for_match("slq: .* [1-9][0-9]* of 1000000 probes done")) << c.err();
  c.signal(SIGTERM);
  EXPECT_EQ(c.finish(30), 143);
  EXPECT_NE(c.err().find(" probes done, eta "), std::string::npos) << c.err();
}
