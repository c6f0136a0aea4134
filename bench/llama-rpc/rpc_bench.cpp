// Decode and prefill speed of a model whose layers are split over llama.cpp RPC servers
// (all layers offloaded, split evenly): the baseline Nakshatra's chains are compared with.
// Usage: rpc_bench MODEL THREADS HOST:PORT[,HOST:PORT...] TOKENS REPS PROMPT...
// Each prompt is tokenized as nak-node's generate does (special tokens added and parsed);
// prints one JSON line per prompt with the medians of prefill ms and decode tokens/s.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "ggml-rpc.h"
#include "llama.h"

static std::vector<std::string> split(const std::string & s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
    return out;
}

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

int main(int argc, char ** argv) {
    if (argc < 7) {
        std::fprintf(stderr, "usage: %s MODEL THREADS ENDPOINTS TOKENS REPS PROMPT...\n", argv[0]);
        return 2;
    }
    const int threads = std::atoi(argv[2]);
    const auto endpoints = split(argv[3]);
    const int n_gen = std::atoi(argv[4]);
    const int reps = std::atoi(argv[5]);

    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    std::vector<ggml_backend_dev_t> devices;
    for (const auto & e : endpoints) {
        ggml_backend_reg_t reg = ggml_backend_rpc_add_server(e.c_str());
        if (reg == nullptr || ggml_backend_reg_dev_count(reg) == 0) {
            std::fprintf(stderr, "cannot reach rpc server %s\n", e.c_str());
            return 1;
        }
        devices.push_back(ggml_backend_reg_dev_get(reg, 0));
    }
    devices.push_back(nullptr);
    std::vector<float> tensor_split(llama_max_devices(), 0.0f);
    for (size_t i = 0; i < endpoints.size(); i++) tensor_split[i] = 1.0f;

    auto mparams = llama_model_default_params();
    mparams.devices = devices.data();
    mparams.n_gpu_layers = 999;
    mparams.split_mode = LLAMA_SPLIT_MODE_LAYER;
    mparams.tensor_split = tensor_split.data();
    llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (model == nullptr) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    for (int p = 6; p < argc; p++) {
        const std::string text = argv[p];
        std::vector<llama_token> prompt(text.size() + 8);
        const int n_prompt = llama_tokenize(vocab, text.c_str(), (int) text.size(), prompt.data(), (int) prompt.size(), true, true);
        if (n_prompt <= 0) {
            std::fprintf(stderr, "cannot tokenize prompt %d\n", p - 5);
            return 1;
        }
        prompt.resize(n_prompt);
        std::vector<double> prefill_ms, decode_tps;
        for (int r = 0; r < reps; r++) {
            auto cparams = llama_context_default_params();
            cparams.n_ctx = n_prompt + n_gen + 16;
            cparams.n_batch = std::max(512, n_prompt);
            cparams.n_threads = threads;
            cparams.n_threads_batch = threads;
            llama_context * ctx = llama_init_from_model(model, cparams);
            if (ctx == nullptr) {
                std::fprintf(stderr, "cannot create a context\n");
                return 1;
            }
            auto t0 = std::chrono::steady_clock::now();
            if (llama_decode(ctx, llama_batch_get_one(prompt.data(), n_prompt)) != 0) return 1;
            auto argmax = [&]() {
                const float * logits = llama_get_logits_ith(ctx, -1);
                return (llama_token) (std::max_element(logits, logits + n_vocab) - logits);
            };
            llama_token tok = argmax();
            auto t1 = std::chrono::steady_clock::now();
            for (int i = 1; i < n_gen; i++) {
                if (llama_decode(ctx, llama_batch_get_one(&tok, 1)) != 0) return 1;
                tok = argmax();
            }
            auto t2 = std::chrono::steady_clock::now();
            prefill_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
            decode_tps.push_back((n_gen - 1) / std::chrono::duration<double>(t2 - t1).count());
            llama_free(ctx);
        }
        std::printf("{\"servers\":%zu,\"threads\":%d,\"prompt_tokens\":%d,\"prefill_ms\":%.2f,\"decode_tokens_per_s\":%.2f}\n",
                    endpoints.size(), threads, n_prompt, median(prefill_ms), median(decode_tps));
        std::fflush(stdout);
    }
    llama_model_free(model);
    return 0;
}
