// SPDX-License-Identifier: AGPL-3.0-or-later
// The reflow-agent commands. Each returns the process exit status.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace agent::cli {

/// Exit status when the daemon is not running (LSB `status`: "program is not running").
inline constexpr int k_exit_not_running = 3;

/// `keygen`: creates the Ed25519 key at `key_path` (mode 0600, never overwriting one), writes its
/// public JWK beside it at public_jwk_path(key_path) (mode 0644) and prints that JWK.
int keygen(const std::filesystem::path& key_path);
/// `key show`: prints the public JWK of the key at `key_path`, or at agent.key_file of the config
/// at `config_path` (exactly one is set), derived from the private key file.
int key_show(const std::optional<std::filesystem::path>& key_path,
             const std::optional<std::filesystem::path>& config_path);
int run(const std::filesystem::path& config_path, const std::string& log_level_override);
int emit(const std::filesystem::path& config_path);
int status(const std::filesystem::path& config_path, bool json);
int export_events(const std::filesystem::path& config_path, std::int64_t from_seq,
                  const std::optional<std::filesystem::path>& outbox_file);
int verify(const std::filesystem::path& jwk_path, const std::string& expected_device);
/// `enroll`: creates (once) the TLS key at mqtt.key_file (default DATA_DIR/tls.key) and prints a
/// CSR with CN = agent.device_id to stdout or `out_file`. With `bundle` (the file of
/// `reflow-ingest ca enroll`, reflow/core/enrolment.hpp) it installs that instead: checks that
/// it is this device's and that its certificate is for this TLS key, writes the node CA's and the
/// device's certificates (mode 0644; mqtt.ca_file and mqtt.cert_file when set, else node-ca.pem
/// and device.crt beside the config) and sets mqtt.url, topic_prefix, ca_file, cert_file and
/// key_file in the config (set_mqtt_string_keys: comments and other keys kept; refused when it
/// cannot be edited safely, before anything is written). Run as root, either gives the TLS key
/// to the service user (the owner of agent.data_dir, else the reflow-agent user) (enroll.cpp).
int enroll(const std::filesystem::path& config_path,
           const std::optional<std::filesystem::path>& out_file,
           const std::optional<std::filesystem::path>& bundle);
int drivers(const std::string& describe_kind);
/// `reflow-agent demo`. With `drivers_file`, its `[[driver]]` tables replace the sim printer and
/// the demo waits for `events` events (within `timeout_s` more seconds).
struct DemoOptions {
  int jobs = 3;
  bool keep = false;
  std::optional<std::filesystem::path> drivers_file;
  std::int64_t events = 0;
  int timeout_s = 0;
};
int demo(const DemoOptions& options);

/// `members list`: the members of [members] file (handle, agent, number of badges, machines) and
/// the last unknown card (keyed hash) each machine saw (members.cpp).
int members_list(const std::filesystem::path& config_path);
/// `members add HANDLE --agent REF (--last-unknown [--machine NAME] | --badge HASH)`: adds the
/// badge to the member (a new [[member]] when the handle is new) in [members] file, keeping the
/// file's comments (drivers/common add_member_badge). --last-unknown takes the last unknown card
/// of the one machine that saw one, or of --machine; the member is then authorised on it.
struct MembersAddOptions {
  std::string handle;
  std::string agent_ref;
  bool last_unknown = false;
  std::string badge;  ///< a keyed hash, when not --last-unknown
  std::optional<std::string> machine;
};
int members_add(const std::filesystem::path& config_path, const MembersAddOptions& options);

/// `audit`: checks that every event a verified signed ack covered is still in the node's latest
/// signed checkpoint, unchanged, and that the checkpoint extends the log the agent verified last
/// (agent::audit_node, PROTOCOL §5.2). Prints a summary (text, or one JSON object with `json`)
/// and progress lines on stderr. Exit 0 when everything is proven, 1 when an event is missing,
/// altered or not proven or the log is inconsistent, 2 when the audit could not run (audit.cpp).
int audit(const std::filesystem::path& config_path, bool json, int timeout_s,
          const std::optional<std::filesystem::path>& witness_path);

/// Prints "reflow-agent: MESSAGE" to stderr.
void print_error(const std::string& message);

}  // namespace agent::cli
