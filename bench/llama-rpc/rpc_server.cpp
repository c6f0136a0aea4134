// An RPC server of llama.cpp's ggml RPC backend on the CPU: the remote half of the
// "llama.cpp RPC split" baseline in docs/BENCHMARKS.md.
// Usage: rpc_server HOST:PORT [THREADS]
#include <cstdio>
#include <cstdlib>

#include "ggml-backend.h"
#include "ggml-rpc.h"

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s HOST:PORT [THREADS]\n", argv[0]);
        return 2;
    }
    size_t threads = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 1;
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu == nullptr) {
        std::fprintf(stderr, "no CPU backend\n");
        return 1;
    }
    std::printf("rpc server on %s, %zu thread(s)\n", argv[1], threads);
    std::fflush(stdout);
    ggml_backend_rpc_start_server(argv[1], nullptr, threads, 1, &cpu);
    return 0;
}
