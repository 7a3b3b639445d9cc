// Example robot-side client for the spinert bridge (schema v1, see bridge/PROTOCOL.md).
//
// Subscribes to the server's PUB socket and/or asks its request socket for the last result, and prints
// every vertebra's VerSe label, name, LPS centre (mm) and mask voxel count (decoding "packbits-zlib/1").
// Built from distribution packages only: cppzmq (header-only) + libzmq, msgpack-c (C++, header-only), zlib.
//
//   spinert_client --sub tcp://127.0.0.1:5556 [--count N] [--timeout-ms T]
//   spinert_client --req tcp://127.0.0.1:5557 --last
//
// Output (stdout), one line per item, stable for scripts:
//   result id=<id> seq=<n> volume=<id> size=<i>,<j>,<k> vertebrae=<m>
//   vertebra label=<VerSe id> name=<name> center=<x>,<y>,<z> voxels=<n>
// Status messages go to stderr. Exit code 0 when the requested results arrived, 1 on timeout/error.

#include <zmq.hpp>
#define MSGPACK_NO_BOOST 1
#include <msgpack.hpp>
#include <zlib.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using msgpack::object;

// Looks a key up in a msgpack map; nullptr when absent (unknown keys are simply never asked for).
const object* find(const object& map, const char* key) {
    if (map.type != msgpack::type::MAP) return nullptr;
    const std::size_t n = std::strlen(key);
    for (uint32_t i = 0; i < map.via.map.size; ++i) {
        const object& k = map.via.map.ptr[i].key;
        if (k.type == msgpack::type::STR && k.via.str.size == n && std::memcmp(k.via.str.ptr, key, n) == 0)
            return &map.via.map.ptr[i].val;
    }
    return nullptr;
}

std::string str(const object* o, const char* fallback = "") {
    if (o && o->type == msgpack::type::STR) return std::string(o->via.str.ptr, o->via.str.size);
    return fallback;
}

double num(const object& o) {
    switch (o.type) {
        case msgpack::type::FLOAT64:
        case msgpack::type::FLOAT32: return o.via.f64;
        case msgpack::type::POSITIVE_INTEGER: return static_cast<double>(o.via.u64);
        case msgpack::type::NEGATIVE_INTEGER: return static_cast<double>(o.via.i64);
        default: throw std::runtime_error("expected a number");
    }
}

std::vector<double> nums(const object* o, std::size_t want) {
    if (!o || o->type != msgpack::type::ARRAY || o->via.array.size != want)
        throw std::runtime_error("expected an array of numbers");
    std::vector<double> v;
    for (uint32_t i = 0; i < want; ++i) v.push_back(num(o->via.array.ptr[i]));
    return v;
}

// "packbits-zlib/1": zlib stream of the [k][j][i] (i fastest) bool mask, bit-packed MSB first.
uint64_t mask_voxels(const object* mask) {
    if (!mask || mask->type != msgpack::type::MAP) return 0;
    if (str(find(*mask, "encoding")) != "packbits-zlib/1") throw std::runtime_error("unknown mask encoding");
    const std::vector<double> shape = nums(find(*mask, "shape_ijk"), 3);
    const uint64_t n = static_cast<uint64_t>(shape[0]) * static_cast<uint64_t>(shape[1]) * static_cast<uint64_t>(shape[2]);
    if (n == 0) return 0;
    const object* data = find(*mask, "data");
    if (!data || data->type != msgpack::type::BIN) throw std::runtime_error("mask data is not bytes");
    std::vector<unsigned char> packed((n + 7) / 8);
    uLongf len = packed.size();
    if (uncompress(packed.data(), &len, reinterpret_cast<const Bytef*>(data->via.bin.ptr), data->via.bin.size) != Z_OK
        || len != packed.size())
        throw std::runtime_error("corrupt mask data");
    uint64_t count = 0;
    for (uint64_t b = 0; b < n; ++b) count += (packed[b >> 3] >> (7 - (b & 7))) & 1u;
    return count;
}

void print_result(const object& msg) {
    const object* verts = find(msg, "vertebrae");
    const object* vol = find(msg, "volume");
    const object* seq = find(msg, "seq");
    const std::vector<double> size = nums(vol ? find(*vol, "size") : nullptr, 3);
    const uint32_t m = (verts && verts->type == msgpack::type::ARRAY) ? verts->via.array.size : 0;
    std::printf("result id=%s seq=%.0f volume=%s size=%.0f,%.0f,%.0f vertebrae=%u\n", str(find(msg, "id"), "-").c_str(),
                seq ? num(*seq) : -1.0, vol ? str(find(*vol, "id")).c_str() : "", size[0], size[1], size[2], m);
    for (uint32_t i = 0; i < m; ++i) {
        const object& v = verts->via.array.ptr[i];
        const std::vector<double> c = nums(find(v, "center_lps_mm"), 3);
        const object* label = find(v, "label");
        std::printf("vertebra label=%.0f name=%s center=%.4f,%.4f,%.4f voxels=%llu\n", label ? num(*label) : -1.0,
                    str(find(v, "name")).c_str(), c[0], c[1], c[2],
                    static_cast<unsigned long long>(mask_voxels(find(v, "mask"))));
    }
    std::fflush(stdout);
}

// Returns true for a result (printed), false for anything else (status/heartbeat logged to stderr).
bool handle(const zmq::message_t& frame) {
    msgpack::object_handle oh = msgpack::unpack(static_cast<const char*>(frame.data()), frame.size());
    const object& msg = oh.get();
    const std::string schema = str(find(msg, "schema"));
    if (schema == "spinert.result/1") {
        print_result(msg);
        return true;
    }
    if (schema == "spinert.error/1") {
        std::fprintf(stderr, "error: %s: %s\n", str(find(msg, "code")).c_str(), str(find(msg, "error")).c_str());
    } else if (schema == "spinert.status/1") {
        std::fprintf(stderr, "status %s %s\n", str(find(msg, "state")).c_str(), str(find(msg, "stage")).c_str());
    }
    return false;
}

bool wait_readable(zmq::socket_t& s, long timeout_ms) {
    zmq::pollitem_t items[] = {{s.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 1, std::chrono::milliseconds(timeout_ms));
    return items[0].revents & ZMQ_POLLIN;
}

int request_last(zmq::context_t& ctx, const std::string& endpoint, long timeout_ms) {
    zmq::socket_t req(ctx, zmq::socket_type::req);
    req.set(zmq::sockopt::linger, 0);
    req.connect(endpoint);
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk(&buf);
    pk.pack_map(3);
    pk.pack(std::string("schema")); pk.pack(std::string("spinert.request/1"));
    pk.pack(std::string("op"));     pk.pack(std::string("last"));
    pk.pack(std::string("id"));     pk.pack(std::string("cpp-last"));
    req.send(zmq::buffer(buf.data(), buf.size()), zmq::send_flags::none);
    if (!wait_readable(req, timeout_ms)) {
        std::fprintf(stderr, "spinert_client: no reply from %s within %ld ms\n", endpoint.c_str(), timeout_ms);
        return 1;
    }
    zmq::message_t reply;
    if (!req.recv(reply, zmq::recv_flags::none)) return 1;
    return handle(reply) ? 0 : 1;
}

int subscribe(zmq::context_t& ctx, const std::string& endpoint, int count, long timeout_ms) {
    zmq::socket_t sub(ctx, zmq::socket_type::sub);
    sub.set(zmq::sockopt::linger, 0);
    sub.set(zmq::sockopt::subscribe, "");  // one msgpack map per frame, no topic: take everything
    sub.connect(endpoint);
    std::printf("subscribed %s\n", endpoint.c_str());
    std::fflush(stdout);
    int results = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (results < count) {
        const long left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now()).count();
        if (left <= 0 || !wait_readable(sub, left)) {
            std::fprintf(stderr, "spinert_client: %d of %d results within %ld ms\n", results, count, timeout_ms);
            return 1;
        }
        zmq::message_t frame;
        if (!sub.recv(frame, zmq::recv_flags::none)) continue;
        try {
            if (handle(frame)) ++results;
        } catch (const std::exception& e) {  // one bad frame never ends the subscription
            std::fprintf(stderr, "spinert_client: skipped a message: %s\n", e.what());
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::string sub_ep, req_ep;
    bool last = false;
    int count = 1;
    long timeout_ms = 10000;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) throw std::runtime_error("missing value after " + a);
            return argv[++i];
        };
        try {
            if (a == "--sub") sub_ep = next();
            else if (a == "--req") req_ep = next();
            else if (a == "--last") last = true;
            else if (a == "--count") count = std::stoi(next());
            else if (a == "--timeout-ms") timeout_ms = std::stol(next());
            else throw std::runtime_error("unknown argument " + a);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "spinert_client: %s\nusage: spinert_client [--sub EP [--count N]] "
                                 "[--req EP --last] [--timeout-ms T]\n", e.what());
            return 2;
        }
    }
    if (sub_ep.empty() && !(last && !req_ep.empty())) {
        std::fprintf(stderr, "spinert_client: give --sub EP and/or --req EP --last\n");
        return 2;
    }
    try {
        zmq::context_t ctx;
        int rc = 0;
        if (last && !req_ep.empty()) rc = request_last(ctx, req_ep, timeout_ms);
        if (rc == 0 && !sub_ep.empty()) rc = subscribe(ctx, sub_ep, count, timeout_ms);
        return rc;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "spinert_client: %s\n", e.what());
        return 1;
    }
}
