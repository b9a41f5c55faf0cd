// SPDX-License-Identifier: AGPL-3.0-or-later
// Certificate signing requests for the tests of the TLS helpers and of the node's CA.
#pragma once

#include <filesystem>
#include <string>

namespace reflow_test {

/// A PEM CSR (agent::tls::make_csr) for common name `cn`, signed by the key at `key_file`, which
/// is made first when absent (agent::tls::load_or_create_key); a test failure and "" when either
/// fails.
std::string make_csr(const std::filesystem::path& key_file, const std::string& cn);

/// `csr` with one base64 digit of its ECDSA signature's s value changed (the DER ends with it),
/// so that it still parses but its signature does not verify.
std::string with_broken_signature(std::string csr);

}  // namespace reflow_test
