// SPDX-License-Identifier: Apache-2.0
// jetstream_tool: what the jetstream plugin's tests need from a NATS JetStream cluster, through
// the NATS C client (Debian ships no `nats` CLI).
//
//   jetstream_tool info   SERVERS STREAM          one JSON object: messages, first_seq, last_seq,
//                                                 leader, replicas, duplicate_window_ns
//   jetstream_tool dump   SERVERS STREAM [--data] one JSON line per stored message: seq, subject,
//                                                 headers {name: [values]}, data_b64 (--data)
//   jetstream_tool delete SERVERS STREAM          deletes the stream (absent: exit 0)
//   jetstream_tool ready  SERVERS SECONDS         waits until JetStream answers (exit 1 if not)
//
// SERVERS is a comma-separated list of URLs. Exit 0 on success, 2 when the stream does not
// exist (info, dump), 1 on any other error (message on stderr).
#include <nats/nats.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

std::string json(std::string_view s)
{
    std::string out = "\"";
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (ch == '"' || ch == '\\') {
            out += '\\';
            out += ch;
        } else if (c < 0x20 || c >= 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
            out += buf;
        } else {
            out += ch;
        }
    }
    return out + "\"";
}

std::string base64(const unsigned char* p, std::size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (std::size_t i = 0; i < n; i += 3) {
        const std::uint32_t b0 = p[i], b1 = i + 1 < n ? p[i + 1] : 0u, b2 = i + 2 < n ? p[i + 2] : 0u;
        const std::uint32_t v = (b0 << 16) | (b1 << 8) | b2;
        out += tab[(v >> 18) & 63];
        out += tab[(v >> 12) & 63];
        out += i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out += i + 2 < n ? tab[v & 63] : '=';
    }
    return out;
}

int fail(const char* what, natsStatus s, jsErrCode jerr = static_cast<jsErrCode>(0))
{
    natsStatus ignored = NATS_OK;
    const char* last = nats_GetLastError(&ignored);
    std::fprintf(stderr, "jetstream_tool: %s: %s%s%s (jerr %d)\n", what, natsStatus_GetText(s), last ? ": " : "",
                 last ? last : "", static_cast<int>(jerr));
    return 1;
}

struct session {
    natsConnection* nc = nullptr;
    jsCtx* js = nullptr;
    ~session()
    {
        jsCtx_Destroy(js);
        natsConnection_Destroy(nc);
    }
};

natsStatus open_session(session& ss, const std::string& servers, std::int64_t timeout_ms)
{
    std::vector<std::string> urls;
    std::size_t start = 0;
    for (;;) {
        const std::size_t comma = servers.find(',', start);
        urls.push_back(servers.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    std::vector<const char*> ptrs;
    for (const auto& u : urls) ptrs.push_back(u.c_str());
    natsOptions* opts = nullptr;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = natsOptions_SetServers(opts, ptrs.data(), static_cast<int>(ptrs.size()));
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts, timeout_ms);
    if (s == NATS_OK) s = natsOptions_SetName(opts, "jetstream_tool");
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, 20);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 100);
    if (s == NATS_OK) s = natsConnection_Connect(&ss.nc, opts);
    natsOptions_Destroy(opts);
    jsOptions jo;
    if (s == NATS_OK) s = jsOptions_Init(&jo);
    jo.Wait = timeout_ms;
    if (s == NATS_OK) s = natsConnection_JetStream(&ss.js, ss.nc, &jo);
    return s;
}

int info(session& ss, const char* stream)
{
    jsStreamInfo* si = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    const natsStatus s = js_GetStreamInfo(&si, ss.js, stream, nullptr, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) return 2;
    if (s != NATS_OK) return fail("stream info", s, jerr);
    std::printf("{\"messages\": %llu, \"first_seq\": %llu, \"last_seq\": %llu, \"leader\": %s, \"replicas\": %lld, "
                "\"duplicate_window_ns\": %lld}\n",
                static_cast<unsigned long long>(si->State.Msgs), static_cast<unsigned long long>(si->State.FirstSeq),
                static_cast<unsigned long long>(si->State.LastSeq),
                json(si->Cluster && si->Cluster->Leader ? si->Cluster->Leader : "").c_str(),
                static_cast<long long>(si->Config->Replicas), static_cast<long long>(si->Config->Duplicates));
    jsStreamInfo_Destroy(si);
    return 0;
}

int dump(session& ss, const char* stream, bool with_data)
{
    jsStreamInfo* si = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_GetStreamInfo(&si, ss.js, stream, nullptr, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) return 2;
    if (s != NATS_OK) return fail("stream info", s, jerr);
    const std::uint64_t first = si->State.FirstSeq, last = si->State.LastSeq, count = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    if (count == 0) return 0;
    for (std::uint64_t seq = first; seq <= last; ++seq) {
        natsMsg* m = nullptr;
        for (int attempt = 0;; ++attempt) {
            jerr = static_cast<jsErrCode>(0);
            s = js_GetMsg(&m, ss.js, stream, seq, nullptr, &jerr);
            if (s == NATS_OK || s == NATS_NOT_FOUND || attempt == 10) break;
            nats_Sleep(200);  // a leader election after a node was killed
        }
        if (s == NATS_NOT_FOUND) continue;  // deleted
        if (s != NATS_OK) return fail("get message", s, jerr);
        std::string line =
            "{\"seq\": " + std::to_string(seq) + ", \"subject\": " + json(natsMsg_GetSubject(m)) + ", \"headers\": {";
        const char** keys = nullptr;
        int nkeys = 0;
        if (natsMsgHeader_Keys(m, &keys, &nkeys) == NATS_OK) {
            for (int k = 0; k < nkeys; ++k) {
                const char** values = nullptr;
                int nvalues = 0;
                line += (k ? ", " : "") + json(keys[k]) + ": [";
                if (natsMsgHeader_Values(m, keys[k], &values, &nvalues) == NATS_OK) {
                    for (int v = 0; v < nvalues; ++v) line += (v ? ", " : "") + json(values[v]);
                    std::free(static_cast<void*>(values));
                }
                line += "]";
            }
            std::free(static_cast<void*>(keys));
        }
        line += "}";
        if (with_data)
            line += ", \"data_b64\": \"" +
                    base64(reinterpret_cast<const unsigned char*>(natsMsg_GetData(m)),
                           static_cast<std::size_t>(natsMsg_GetDataLength(m))) +
                    "\"";
        line += "}\n";
        std::fwrite(line.data(), 1, line.size(), stdout);
        natsMsg_Destroy(m);
    }
    return 0;
}

int remove(session& ss, const char* stream)
{
    jsErrCode jerr = static_cast<jsErrCode>(0);
    const natsStatus s = js_DeleteStream(ss.js, stream, nullptr, &jerr);
    if (s == NATS_OK || s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) return 0;
    return fail("delete stream", s, jerr);
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc < 4) {
        std::fprintf(stderr, "usage: jetstream_tool info|dump|delete SERVERS STREAM [--data]\n"
                             "       jetstream_tool ready SERVERS SECONDS\n");
        return 1;
    }
    const std::string cmd = argv[1];
    int rc = 1;
    {
        session ss;
        if (cmd == "ready") {
            const std::int64_t until = nats_Now() + static_cast<std::int64_t>(std::atof(argv[3]) * 1000);
            for (;;) {
                session attempt;
                natsStatus s = open_session(attempt, argv[2], 1000);
                jsAccountInfo* ai = nullptr;
                jsErrCode jerr = static_cast<jsErrCode>(0);
                if (s == NATS_OK) s = js_GetAccountInfo(&ai, attempt.js, nullptr, &jerr);
                jsAccountInfo_Destroy(ai);
                if (s == NATS_OK) {
                    rc = 0;
                    break;
                }
                if (nats_Now() > until) {
                    rc = fail("JetStream not ready", s, jerr);
                    break;
                }
                nats_Sleep(200);
            }
        } else {
            const natsStatus s = open_session(ss, argv[2], 5000);
            if (s != NATS_OK) {
                rc = fail("connect", s);
            } else if (cmd == "info") {
                rc = info(ss, argv[3]);
            } else if (cmd == "dump") {
                rc = dump(ss, argv[3], argc > 4 && std::strcmp(argv[4], "--data") == 0);
            } else if (cmd == "delete") {
                rc = remove(ss, argv[3]);
            } else {
                std::fprintf(stderr, "jetstream_tool: unknown command %s\n", cmd.c_str());
            }
        }
    }
    std::fflush(stdout);
    nats_CloseAndWait(2000);
    return rc;
}
