// SPDX-License-Identifier: AGPL-3.0-or-later
// A real store and a device key, filled with events as the node stores them after verifying
// them (PROTOCOL §7), for the tests that verify, query or export a store.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include <reflow/core/jose.hpp>
#include <reflow/node/store.hpp>

namespace ingest::test_store {

/// Opens a real SQLite store at DIR/ingest.db into `store` and generates a device key at
/// DIR/device.key into `key`. Either failing is a fatal test failure: call it under
/// ASSERT_NO_FATAL_FAILURE.
inline void open_store_and_key(const std::filesystem::path& dir, std::unique_ptr<Store>& store,
                               std::optional<agent::DeviceKey>& key) {
  auto opened = open_sqlite_store(dir / "ingest.db");
  ASSERT_TRUE(opened) << opened.error().message;
  store = std::move(*opened);
  auto made = agent::DeviceKey::generate(dir / "device.key");
  ASSERT_TRUE(made) << made.error().message;
  key.emplace(std::move(*made));
}

/// The hash of the last event put per (device, stream), for the next one's `prev`.
using LastHashes = std::map<std::pair<std::string, std::string>, std::string>;

/// Stores `events`: each payload signed with `key` into a JWS envelope, chained per (device,
/// stream) through `last_hash`, in one Store::put at `now_unix_ms`. Every event must be stored.
inline void put_verified(Store& store, const agent::DeviceKey& key,
                         const std::vector<StoredEvent>& events, LastHashes& last_hash,
                         std::int64_t now_unix_ms) {
  std::vector<Incoming> batch;
  for (const auto& e : events) {
    VerifiedEvent v;
    v.topic = "reflow/v1/" + e.device + "/events";
    // The store keeps the envelope and reads each payload back out of it.
    v.kid = key.public_jwk().kid;
    v.envelope =
        agent::jws_sign(key, agent::jws_protected_header_b64(v.kid), e.payload).to_envelope();
    v.payload = e.payload;
    v.device = e.device;
    v.stream = e.stream;
    v.seq = e.seq;
    v.prev = e.seq == 1 ? "" : last_hash[{e.device, e.stream}];
    v.id = e.id;
    v.action = e.action;
    v.recorded_unix_ms = e.recorded_unix_ms;
    v.signing_input_sha256 = agent::sha256_b64url(v.envelope);
    last_hash[{e.device, e.stream}] = v.signing_input_sha256;
    batch.push_back(Incoming{v, std::nullopt});
  }
  auto results = store.put(batch, now_unix_ms);
  ASSERT_TRUE(results) << results.error().message;
  for (const auto& r : *results)
    ASSERT_EQ(r.outcome, PutOutcome::stored) << r.detail;
}

// An intent row of the export ledger (recorded = false, no server id yet).
inline LedgerEntry ledger_row(std::string server, LedgerKind kind, std::string ref,
                              std::string note, std::string event_id = "",
                              std::string creates = "") {
  LedgerEntry e;
  e.server = std::move(server);
  e.kind = kind;
  e.ref = std::move(ref);
  e.note = std::move(note);
  e.event_id = std::move(event_id);
  e.creates = std::move(creates);
  return e;
}

}  // namespace ingest::test_store
