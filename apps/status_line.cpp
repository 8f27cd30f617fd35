#include "status_line.h"

#include "options.h"
#include "signals.h"

#include <pthread.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>

namespace natgrad {
namespace cli {

double progress_interval() {
  const char* text = std::getenv("NATGRAD_PROGRESS_INTERVAL");
  if (text == nullptr) return kProgressInterval;
  char* end = nullptr;
  const double s = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(s >= 0.01 && s <= 3600))
    usage_error(std::string("the environment's NATGRAD_PROGRESS_INTERVAL must be seconds between 0.01 and 3600, got \"") +
                text + "\"; unset it for the default " + std::to_string(int(kProgressInterval)) + " s");
  return s;
}

StatusLine::StatusLine(const Progress& progress, double interval)
    : progress_(progress),
      interval_(std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(interval))),
      quiet_(progress.quiet()),
      terminal_(::isatty(STDERR_FILENO) == 1),
      since_(clock_type::now()),
      last_print_(since_) {
  if (quiet_) return;
  // The ticker starts with SIGINT and SIGTERM blocked (a thread inherits its creator's mask): they are for the
  // threads that compute, never for the one that prints.
  sigset_t signals, before;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, &before);
  ticker_ = std::thread([this] { tick(); });
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
}

StatusLine::~StatusLine() { finish(); }

void StatusLine::update(std::string status, Show show) {
  std::lock_guard<std::mutex> lock(mutex_);
  status_ = std::move(status);
  fresh_ = true;
  if (show != Show::later) print(false);
  if (show == Show::now_ended) end_line();
}

void StatusLine::begin(std::string what) {
  std::lock_guard<std::mutex> lock(mutex_);
  what_ = std::move(what);
  since_ = clock_type::now();
}

void StatusLine::finish() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (ticker_.joinable()) ticker_.join();
  std::lock_guard<std::mutex> lock(mutex_);
  end_line();
}

// Every update is due `interval_` after the last one, whoever printed it (a step's first or last, an update of
// the ticker's): the gap between two is at most the interval and the time the wait takes to return.
void StatusLine::tick() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    const clock_type::time_point due = last_print_ + interval_;
    if (clock_type::now() < due)
      wake_.wait_until(lock, due);
    else
      print(!fresh_);
  }
}

void StatusLine::print(bool running) {
  const clock_type::time_point now = clock_type::now();
  last_print_ = now;
  fresh_ = false;
  if (quiet_) return;
  std::string text = status_;
  if (running && !what_.empty()) {
    char seconds[48];
    std::snprintf(seconds, sizeof seconds, " running %.1f s", std::chrono::duration<double>(now - since_).count());
    text += (text.empty() ? "" : ", ") + what_ + seconds;
  }
  if (text.empty()) return;
  // A pipe keeps every line: an update of the ticker's shows there only what is new, the seconds of a phase
  // running as they change (not the status printed already with nothing running, nor the same tenths of a
  // second twice). (A terminal's line is rewritten in place: its stamp shows the command alive.)
  if (!terminal_) {
    if (running && (what_.empty() || text == piped_)) return;
    piped_ = text;
  }
  char stamp[32];
  std::snprintf(stamp, sizeof stamp, "[%7.2fs] ", progress_.elapsed());
  std::string line = stamp + text;
  if (terminal_) {
    // Cut to the terminal's width: a line that wrapped would leave its first rows behind at the next "\r".
    winsize size{};
    if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 1 && line.size() >= size.ws_col)
      line.resize(size.ws_col - 1);
    line = "\r" + line + "\033[K";
    set_stderr_line_open(true);
  } else {
    line += '\n';
  }
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

void StatusLine::end_line() {
  if (!stderr_line_open()) return;
  std::fputc('\n', stderr);  // (then closed: a signal between the two writes a blank line, not a glued one)
  std::fflush(stderr);
  set_stderr_line_open(false);
}

}  // namespace cli
}  // namespace natgrad
