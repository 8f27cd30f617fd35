#include "signals.h"

#include <atomic>
#include <cstring>
#include <unistd.h>

namespace natgrad {
namespace cli {

volatile std::sig_atomic_t g_signal = 0;

namespace {

volatile std::sig_atomic_t g_announce = 0;
// Set by the status line's thread and the main thread, read and cleared by the handler on whichever thread takes
// the signal: a lock-free atomic, which a handler may use.
std::atomic<int> g_line_open{0};
static_assert(std::atomic<int>::is_always_lock_free, "the handler needs a lock-free flag");

// Only async-signal-safe calls here: write(2) and _exit(2).
void say(const char* text) {
  if (!g_announce) return;
  if (g_line_open.exchange(0) != 0) {
    const ssize_t ignored = ::write(STDERR_FILENO, "\n", 1);
    (void)ignored;
  }
  const ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

extern "C" void on_signal(int sig) {
  if (g_signal != 0) {  // the second: quit now
    say(sig == SIGINT ? "second interrupt: quitting now\n" : "second signal: quitting now\n");
    ::_exit(128 + sig);
  }
  g_signal = sig;
  say(sig == SIGINT ? "interrupt received: stopping at the next chunk; press Ctrl-C again to quit now\n"
                    : "SIGTERM received: stopping at the next chunk; a second signal quits now\n");
}

}  // namespace

void install_signal_handlers(bool announce) {
  g_announce = announce ? 1 : 0;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // (reads and writes in progress go on; the command polls the flag)
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

void set_stderr_line_open(bool open) { g_line_open.store(open ? 1 : 0); }

bool stderr_line_open() { return g_line_open.load() != 0; }

const char* signal_name(int fallback) {
  const int s = g_signal != 0 ? int(g_signal) : fallback;
  return s == SIGINT ? "SIGINT" : "SIGTERM";
}

int interrupted_status(int fallback) { return 128 + (g_signal != 0 ? int(g_signal) : fallback); }

}  // namespace cli
}  // namespace natgrad
