// What `natgrad train` shows on stderr while it runs (issue 27): on a terminal (a pseudo-terminal here) one line
// per epoch rewritten in place ("\r" … "\033[K"), cut to the terminal's width, ended by a newline at the epoch's
// end before the evaluation's line on stdout; through a pipe a plain line per update that says something new;
// an update every interval even inside a long step (the step then shown running); a signal's announcement on
// a line of its own; nothing with --quiet; a bad NATGRAD_PROGRESS_INTERVAL ends with one line.
#include "cli_fixture.h"
#include "status_line.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <functional>
#include <poll.h>
#include <pty.h>
#include <regex>
#include <sstream>
#include <sys/wait.h>
#include <termios.h>
#include <thread>
#include <unistd.h>

using namespace natgrad;
using namespace natgrad::test;
using namespace natgrad::test::cli_fixture;

namespace {

const char* kFast = R"({"input_shape": [6], "likelihood": "categorical", "layers": [
  {"type": "linear", "in_features": 6, "out_features": 8}, {"type": "tanh"},
  {"type": "linear", "in_features": 8, "out_features": 3}]})";
// 600 CG iterations over 22 000 parameters a step: a step takes some 0.3 s (AMD EPYC, Release), several times
// the 0.05 s interval the tests set; under the sanitizers (some 18 times slower) 100 take as long.
#if defined(NATGRAD_SANITIZE)
const int kCgIterations = 100;
#else
const int kCgIterations = 600;
#endif
const char* kSlow = R"({"input_shape": [32], "likelihood": "categorical", "layers": [
  {"type": "linear", "in_features": 32, "out_features": 512}, {"type": "tanh"},
  {"type": "linear", "in_features": 512, "out_features": 10}]})";

// The lines of `text` (split at "\n"; a last piece without one is a line too).
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The pieces of a terminal line, each "\r" text "\033[K" (false if one is not).
bool segments_of(const std::string& line, std::vector<std::string>& texts) {
  texts.clear();
  std::size_t at = 0;
  while (at < line.size()) {
    const std::size_t end = line.find("\033[K", at);
    if (line[at] != '\r' || end == std::string::npos) return false;
    texts.push_back(line.substr(at + 1, end - at - 1));
    at = end + 3;
  }
  return true;
}

class TrainProgress : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto write = [](const char* spec, const std::string& name, Index samples) {
      std::ofstream(p(name + ".json")) << spec;
      const ModelFile m = read_model_spec(p(name + ".json"));
      Network<double> model(m.spec);
      save_dataset(p(name + ".safetensors"), random_dataset(model, samples, LikelihoodKind::categorical, 3),
                   m.spec.input_shape);
    };
    write(kFast, "fast", 48);
    write(kSlow, "slow", 128);
  }
  // 3 epochs of 6 Adam steps, each evaluated.
  static std::string fast() {
    return "train --model " + p("fast.json") + " --data " + p("fast.safetensors") + " --test-data " +
           p("fast.safetensors") + " --dtype float64 --batch 8 --epochs 3 --seed 5 --threads 1 --optimizer adam --lr 0.05";
  }
  // 2 epochs of 2 natural-gradient steps.
  static std::string slow() {
    return "train --model " + p("slow.json") + " --data " + p("slow.safetensors") +
           " --dtype float64 --batch 64 --epochs 2 --seed 3 --threads 1 --optimizer natgrad --fisher mc --mc-samples 8 "
           "--solver cg --cg-tol 1e-12 --cg-max-iters " + std::to_string(kCgIterations) +
           " --damping 1e-4 --damping-adapt off --lr 0.001";
  }
  // The environment's NATGRAD_PROGRESS_INTERVAL for a command (nullptr: unset), as sh words.
  static std::string interval_env(const char* interval) {
    return interval ? "NATGRAD_PROGRESS_INTERVAL='" + std::string(interval) + "'; export NATGRAD_PROGRESS_INTERVAL; "
                    : std::string("unset NATGRAD_PROGRESS_INTERVAL; ");
  }

  // The CLI with its stderr a pipe (read by cat) and its stdout a file.
  static Result piped(const std::string& args, const char* interval) {
    const std::string cmd = interval_env(interval) + "{ " + NATGRAD_CLI + " " + args + " 2>&1 > " + p("out") +
                            "; echo $? > " + p("code") + "; } | cat > " + p("err");
    if (std::system(cmd.c_str()) != 0) return {-1, "", ""};
    return {std::stoi(slurp(p("code"))), slurp(p("out")), slurp(p("err"))};
  }

  // The CLI with its stdout and stderr a pseudo-terminal of `columns` columns in raw mode (the bytes as written:
  // no "\n" made "\r\n"): its exit status and all it wrote. `watch` sees the bytes so far after each read.
  static Result in_terminal(const std::string& args, const char* interval, unsigned short columns,
                            const std::function<void(const std::string&, pid_t)>& watch = {}) {
    int master = -1, slave = -1;
    winsize size{};
    size.ws_row = 24;
    size.ws_col = columns;
    if (::openpty(&master, &slave, nullptr, nullptr, &size) != 0) return {-1, "", "openpty failed"};
    termios mode{};
    ::tcgetattr(slave, &mode);
    ::cfmakeraw(&mode);
    ::tcsetattr(slave, TCSANOW, &mode);
    const std::string cmd = interval_env(interval) + "exec " + NATGRAD_CLI + " " + args;
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(master);
      ::dup2(slave, 1);
      ::dup2(slave, 2);
      ::close(slave);
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(slave);
    std::string bytes;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
    for (char buf[4096]; std::chrono::steady_clock::now() < deadline;) {
      pollfd fd{master, POLLIN, 0};
      if (::poll(&fd, 1, 100) <= 0) continue;
      const ssize_t n = ::read(master, buf, sizeof buf);
      if (n <= 0) break;  // (EIO: every end of the terminal's other side closed)
      bytes.append(buf, std::size_t(n));
      if (watch) watch(bytes, pid);
    }
    ::close(master);
    int status = 0;
    if (std::chrono::steady_clock::now() >= deadline) ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, bytes, ""};
  }
};

// The line "[  12.34s] …" of a status update, and a step's status (the fast run's Adam).
const std::regex kStamp(R"(\[ *[0-9]+\.[0-9]{2}s\] .*)");
const std::regex kAdamStep(R"(\[ *[0-9]+\.[0-9]{2}s\] epoch ([0-9]+) step ([0-9]+)/18: loss [0-9.]+, lr 0\.05, eta [0-9]+ s)");

// On a terminal: the first step's status, rewritten in place by the epoch's last; a line per epoch, each ended
// with a newline before the evaluation's line (stdout, the same terminal), none wider than the terminal. (An
// interval of 60 s: the updates are those of the steps alone.)
TEST_F(TrainProgress, OnATerminalEachEpochIsOneLineRewrittenInPlace) {
  const unsigned short columns = 48;
  const Result r = in_terminal(fast(), "60", columns);
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_FALSE(r.out.empty());
  EXPECT_EQ(r.out.back(), '\n') << "the terminal is left at the start of a line";
  std::vector<std::string> status_lines, texts;
  std::vector<std::size_t> evaluations;
  for (const std::string& line : lines_of(r.out)) {
    if (line.find('\r') == std::string::npos && line.find('\033') == std::string::npos) {
      if (line.rfind("epoch ", 0) == 0) {
        evaluations.push_back(status_lines.size());
        EXPECT_EQ(line.rfind("epoch " + std::to_string(evaluations.size()) + ", step ", 0), 0u) << line;
      }
      continue;
    }
    status_lines.push_back(line);
    ASSERT_TRUE(segments_of(line, texts)) << "a status line of \"\\r\" text \"\\033[K\" pieces: " << line;
    for (const std::string& t : texts) {
      EXPECT_LT(t.size(), columns) << "wider than the terminal: " << t;
      EXPECT_TRUE(std::regex_match(t, kStamp)) << t;
    }
    const int epoch = int(status_lines.size());
    const std::string last = "epoch " + std::to_string(epoch) + " step " + std::to_string(6 * epoch) + "/18:";
    EXPECT_EQ(texts.back().find(last), 11u) << "the epoch's line ends on its last step: " << line;
    if (epoch == 1) {
      ASSERT_EQ(texts.size(), 2u) << line;
      EXPECT_NE(texts[0].find("epoch 1 step 1/18:"), std::string::npos) << "the first step, rewritten: " << line;
    } else {
      EXPECT_EQ(texts.size(), 1u) << line;
    }
  }
  EXPECT_EQ(status_lines.size(), 3u) << r.out;
  EXPECT_EQ(evaluations, (std::vector<std::size_t>{1, 2, 3})) << "each evaluation after its epoch's line:\n" << r.out;
  // Evaluations inside epochs (after steps 4, 8, 12, 16): each line on stdout ends the status line first.
  const Result every = in_terminal(fast() + " --eval-every 4", "60", 200);
  ASSERT_EQ(every.code, 0) << every.out;
  int inside = 0;
  for (const std::string& line : lines_of(every.out)) {
    if (line.find("test loss") == std::string::npos) continue;
    EXPECT_EQ(line.find_first_of("\r\033"), std::string::npos) << "a status and an evaluation on one line: " << line;
    inside += line.find(", step 4: ") != std::string::npos;
  }
  EXPECT_EQ(inside, 1) << every.out;
  // One evaluation, at the end: the epochs' ends alone end the lines.
  const Result end = in_terminal(fast() + " --eval-every 100", "60", 200);
  ASSERT_EQ(end.code, 0) << end.out;
  std::vector<std::string> ends;
  for (const std::string& line : lines_of(end.out))
    if (segments_of(line, texts) && !texts.empty()) ends.push_back(texts.back().substr(11, 19));
  EXPECT_EQ(ends, (std::vector<std::string>{"epoch 1 step 6/18: ", "epoch 2 step 12/18:", "epoch 3 step 18/18:"}))
      << end.out;
  // A status line that was not cut is whole: the full width shows the whole text.
  const Result wide = in_terminal(fast(), "60", 200);
  ASSERT_EQ(wide.code, 0);
  bool matched = false;
  for (const std::string& line : lines_of(wide.out))
    if (segments_of(line, texts) && !texts.empty()) matched = matched || std::regex_match(texts.back(), kAdamStep);
  EXPECT_TRUE(matched) << wide.out;
}

// Through a pipe: no "\r" and no escape, a plain line per update — the first step and each epoch's last (with
// an interval of 60 s there are no others).
TEST_F(TrainProgress, ThroughAPipeAPlainLinePerUpdate) {
  const Result r = piped(fast(), "60");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\033'), std::string::npos) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.back(), '\n');
  std::vector<int> steps;
  for (const std::string& line : lines_of(r.err)) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, kAdamStep)) << line;
    steps.push_back(std::stoi(m[2]));
    EXPECT_EQ(std::stoi(m[1]), (steps.back() + 5) / 6) << line;
  }
  EXPECT_EQ(steps, (std::vector<int>{1, 6, 12, 18})) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 5) << "the header, 3 evaluations, the summary:\n" << r.out;
}

// What `body` writes on stderr, which is meanwhile a file (as through a pipe: not a terminal).
std::string stderr_of(const std::function<void()>& body) {
  std::fflush(stderr);
  const std::string path = p("stderr_of");
  const int file = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const int saved = ::dup(STDERR_FILENO);
  if (file < 0 || saved < 0) return "(stderr not redirected)";
  ::dup2(file, STDERR_FILENO);
  ::close(file);
  body();
  std::fflush(stderr);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  return slurp(path);
}

// Through a pipe the status line prints only what is new: a status once, however many updates find it with
// nothing running (before a phase runs and after it ended), and while a phase runs its seconds as they change
// (an interval of 0.01 s: many updates in each tenth of a second shown).
TEST_F(TrainProgress, ThroughAPipeALineOnlyWhenThereIsSomethingNew) {
  using natgrad::cli::StatusLine;
  const std::string first = "epoch 1 step 1/4: loss 1.5", second = "epoch 1 step 2/4: loss 1.2";
  auto wait = [](double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); };
  const std::string err = stderr_of([&] {
    const natgrad::cli::Progress progress(false);
    StatusLine line(progress, 0.01);
    line.update(first, StatusLine::Show::now);
    wait(0.2);  // nothing running: 20 updates due
    line.begin("step 2");
    wait(0.5);
    line.begin("");  // (step 2 done: nothing running for a while, then its status)
    wait(0.2);
    line.update(second, StatusLine::Show::later);
    wait(0.2);
    line.finish();
  });
  const std::regex stamped(R"(\[ *[0-9]+\.[0-9]{2}s\] (.*))");
  const std::regex running(R"(epoch 1 step 1/4: loss 1\.5, step 2 running ([0-9]+\.[0-9]) s)");
  std::vector<std::string> texts;
  std::vector<double> seconds;
  for (const std::string& line : lines_of(err)) {
    std::smatch m, r;
    ASSERT_TRUE(std::regex_match(line, m, stamped)) << line;
    texts.push_back(m[1]);
    if (std::regex_match(texts.back(), r, running)) seconds.push_back(std::stod(r[1]));
  }
  ASSERT_GE(texts.size(), 2u) << err;
  EXPECT_EQ(texts.front(), first) << err;
  EXPECT_EQ(texts.back(), second) << err;
  EXPECT_EQ(std::count(texts.begin(), texts.end(), first), 1) << err;
  EXPECT_EQ(std::count(texts.begin(), texts.end(), second), 1) << err;
  EXPECT_TRUE(std::adjacent_find(texts.begin(), texts.end()) == texts.end()) << "a line repeated:\n" << err;
  EXPECT_EQ(seconds.size() + 2, texts.size()) << err;
  EXPECT_GE(seconds.size(), 2u) << "the running step's seconds, as they change:\n" << err;
  EXPECT_TRUE(std::is_sorted(seconds.begin(), seconds.end())) << err;
}

// Steps longer than the interval: updates while a step runs, each the last status with the step after it and
// how long that has been running (or, before the first step is done, the first step alone); the steps' statuses
// in order, the first and each epoch's last among them; with --quiet nothing, with the same long steps.
TEST_F(TrainProgress, WhileAStepRunsTheTickerShowsItRunning) {
  const Result r = piped(slow(), "0.05");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::regex status(R"(\[ *[0-9]+\.[0-9]{2}s\] (epoch [0-9]+ step ([0-9]+)/4: loss [^,]+, lr [^,]+, damping [^,]+, )"
                          R"(cg [0-9]+[^,]*, eta [0-9]+ s)?(, )?(.*))");
  const std::regex running(R"((step ([0-9]+)|evaluation) running [0-9]+\.[0-9] s)");
  int first_step = 0, between_steps = 0;
  std::vector<int> shown;  // the steps whose status was shown, each once
  for (const std::string& line : lines_of(r.err)) {
    std::smatch m, w;
    ASSERT_TRUE(std::regex_match(line, m, status)) << line;
    const int step = m[2].matched ? std::stoi(m[2]) : 0;
    if (step > 0 && (shown.empty() || shown.back() != step)) shown.push_back(step);
    const std::string what = m[4];
    if (what.empty()) continue;
    ASSERT_EQ(m[3].matched, step > 0) << line;
    ASSERT_TRUE(std::regex_match(what, w, running)) << line;
    if (!w[2].matched) continue;  // (an evaluation)
    EXPECT_EQ(std::stoi(w[2]), step + 1) << "the step after the one shown runs: " << line;
    (step == 0 ? first_step : between_steps) += 1;
  }
  EXPECT_GT(first_step, 0) << "no update before the first step was done:\n" << r.err;
  EXPECT_GT(between_steps, 0) << "no update while a later step ran:\n" << r.err;
  EXPECT_TRUE(std::is_sorted(shown.begin(), shown.end())) << r.err;
  for (int step : {1, 2, 4}) EXPECT_NE(std::find(shown.begin(), shown.end(), step), shown.end()) << step << "\n" << r.err;

  const Result quiet = piped(slow() + " --quiet", "0.05");
  ASSERT_EQ(quiet.code, 0);
  EXPECT_EQ(quiet.err, "");
  EXPECT_NE(quiet.out.find("trained 4 steps, 2 epochs"), std::string::npos) << quiet.out;
}

// On a terminal the ticker's updates rewrite the line too; SIGINT while a line is open: its announcement starts
// a line of its own, and the run stops at the next step boundary (130).
TEST_F(TrainProgress, OnATerminalASignalsAnnouncementStartsALine) {
  bool sent = false;
  const std::regex running(R"(eta [0-9]+ s, step [0-9]+ running)");
  const Result r = in_terminal(slow(), "0.05", 200, [&](const std::string& bytes, pid_t pid) {
    if (!sent && std::regex_search(bytes, running)) {  // (an update of the ticker after a step's)
      ::kill(pid, SIGINT);
      sent = true;
    }
  });
  ASSERT_TRUE(sent) << r.out;
  EXPECT_EQ(r.code, 130) << r.out;
  const std::size_t at = r.out.find("interrupt received");
  ASSERT_NE(at, std::string::npos) << r.out;
  EXPECT_EQ(r.out[at - 1], '\n') << r.out;
  std::vector<std::string> texts;
  bool rewritten = false;
  for (const std::string& line : lines_of(r.out))
    if (segments_of(line, texts) && texts.size() >= 2)
      for (std::size_t k = 1; k < texts.size(); ++k)
        rewritten = rewritten || std::regex_search(texts[k], running);
  EXPECT_TRUE(rewritten) << "an update of the ticker rewrote a step's line:\n" << r.out;
  EXPECT_NE(r.out.find("(stopped by SIGINT)"), std::string::npos) << r.out;
}

// NATGRAD_PROGRESS_INTERVAL: seconds in [0.01, 3600]; anything else ends the command with one line, --quiet or
// not, before any training.
TEST_F(TrainProgress, ABadIntervalEndsWithOneLine) {
  for (const char* bad : {"abc", "", "0", "-1", "0.001", "1e9", "nan", "inf", "2s"}) {
    for (const std::string& quiet : {std::string(), std::string(" --quiet")}) {
      const Result r = piped(fast() + quiet, bad);
      EXPECT_EQ(r.code, 2) << bad;
      EXPECT_NE(r.err.find("NATGRAD_PROGRESS_INTERVAL must be seconds between 0.01 and 3600, got \"" + std::string(bad) +
                           "\""),
                std::string::npos)
          << r.err;
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
      EXPECT_EQ(r.out, "") << bad;
    }
  }
  EXPECT_EQ(piped(fast(), "0.5").code, 0);
}

}  // namespace
