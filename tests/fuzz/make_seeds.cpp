// SPDX-License-Identifier: AGPL-3.0-or-later
// Writes the seeds that need the fixed keys of fuzz_support.hpp: real signed envelopes for the jws
// and node_verifier targets, real event payloads (make_event_payload) for event_payload, and
// signed checkpoints (key 0 and, ignored by the target, key 1) for signed_note.
// Usage: reflow_fuzz_seeds CORPUS_DIR (tests/fuzz/corpus); run again when the payload format
// changes. Seeds are named seed-*, so hand-made and minimized files beside them are kept.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <reflow/core/event.hpp>
#include <reflow/core/jose.hpp>
#include <reflow/core/signed_note.hpp>

#include "fuzz_support.hpp"

namespace {

using Json = nlohmann::ordered_json;

constexpr std::int64_t k_t0 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z

void write(const std::filesystem::path& dir, const std::string& name, const std::string& bytes) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path corpus = argv[1];
  const std::vector<Json> fields = {
      Json::parse(R"({"action":"use","hasPointInTime":"2026-01-01T00:00:00Z",
          "resourceInventoriedAs":"printer-1",
          "effortQuantity":{"hasNumericalValue":1.5,"hasUnit":"hour"}})"),
      Json::parse(R"({"action":"consume","hasBeginning":"2026-01-01T00:00:00.000Z",
          "hasEnd":"2026-01-01T01:00:00.000Z","resourceConformsTo":"filament:pla",
          "resourceQuantity":{"hasNumericalValue":12.5,"hasUnit":"gram"},
          "inputOf":"moonraker:prusa:job-000012","note":"whistle_v2.gcode"})"),
      Json::parse(R"({"action":"produce","hasPointInTime":"2026-01-01T00:00:00Z",
          "resourceConformsTo":"whistle_v2.gcode",
          "resourceQuantity":{"hasNumericalValue":1,"hasUnit":"one"},
          "outputOf":"moonraker:prusa:job-000012","meta":{"status":"completed"}})"),
      Json::parse(R"({"action":"work","hasPointInTime":"2026-01-01T00:00:00Z",
          "provider":"member:ada","effortQuantity":{"hasNumericalValue":0.25,"hasUnit":"hour"}})"),
  };
  const char* devices[] = {"fablab-mk4-01", "saw-02"};
  int n = 0;
  for (int key_index = 0; key_index < 2; ++key_index) {
    const auto& key = reflow_fuzz::fixed_key(key_index);
    const auto header = agent::jws_protected_header_b64(key.public_jwk().kid);
    for (std::size_t i = 0; i < fields.size(); ++i, ++n) {
      agent::EventStamp stamp;
      stamp.id = "01KDX3G0" + std::string(17, 'A') + std::to_string(i);
      stamp.id.resize(26, '0');
      stamp.device = devices[key_index];
      stamp.stream = "01KDX3G000STREAMSTREAM0000";
      stamp.seq = static_cast<std::int64_t>(i) + 1;
      stamp.prev = i == 0 ? "" : agent::sha256_b64url("the predecessor's signing input");
      // saw-02's key is revoked an hour after k_t0: half its events come before, half after.
      stamp.recorded_unix_ms = k_t0 + static_cast<std::int64_t>(i) * 1'800'000 + 1000;
      stamp.clock = i % 2 ? agent::ClockSync::unsynced : agent::ClockSync::synced;
      const auto payload = agent::make_event_payload(
          stamp, fields[i], agent::EventSource{"sim", "printer", i % 2 ? "" : "job 12"});
      const auto envelope = agent::jws_sign(key, header, payload).to_envelope();
      const auto name = "seed-" + std::to_string(n);
      write(corpus / "event_payload", name, payload);
      write(corpus / "jws", name, envelope);
      // node_verifier: mode byte 0 / 3 (envelope on the key's topic), 1 / 2 (payload signed here).
      write(corpus / "node_verifier", name + "-envelope",
            std::string(1, key_index == 0 ? '\x00' : '\x03') + envelope);
      write(corpus / "node_verifier", name + "-payload",
            std::string(1, key_index == 0 ? '\x01' : '\x02') + payload);
    }
  }
  agent::note::Checkpoint checkpoint{"fablab.example/reflow", 5, {}};
  checkpoint.root.fill(0xA5);
  const std::string note = agent::note::sign_checkpoint(reflow_fuzz::fixed_key(0), checkpoint);
  write(corpus / "signed_note", "seed-checkpoint", note);
  const std::string cosigned = agent::note::sign(reflow_fuzz::fixed_key(1), "witness.example/w1",
                                                 agent::note::checkpoint_text(checkpoint));
  write(corpus / "signed_note", "seed-cosigned",
        note + cosigned.substr(cosigned.rfind("\n\n") + 2));
  return 0;
}
