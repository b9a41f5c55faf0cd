// SPDX-License-Identifier: AGPL-3.0-or-later
#include <agent/process.hpp>

#include <pthread.h>

#include <csignal>

namespace agent {

const char* version() noexcept {
  return REFLOW_VERSION;
}

void block_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
}

}  // namespace agent
