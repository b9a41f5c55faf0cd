// SPDX-License-Identifier: AGPL-3.0-or-later
#include "csr.hpp"

#include <gtest/gtest.h>

#include <reflow/core/tls.hpp>

namespace reflow_test {

std::string make_csr(const std::filesystem::path& key_file, const std::string& cn) {
  auto key = agent::tls::load_or_create_key(key_file);
  EXPECT_TRUE(key) << key.error().message;
  auto csr = agent::tls::make_csr(key_file, cn);
  EXPECT_TRUE(csr) << csr.error().message;
  return csr.value_or("");
}

std::string with_broken_signature(std::string csr) {
  const auto end = csr.find("\n-----END");
  EXPECT_NE(end, std::string::npos);
  if (end == std::string::npos || end < 4) return csr;
  std::size_t pos = end - 1;
  while (csr[pos] == '=')
    --pos;
  pos -= 2;
  csr[pos] = csr[pos] == 'A' ? 'B' : 'A';
  return csr;
}

}  // namespace reflow_test
