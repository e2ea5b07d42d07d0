/* A library that only looks like an RKLLM runtime, for the shim's release-detection tests
 * (tests/test_lowlevel.py). Its functions are never called: detection must decide from the
 * file and its symbols alone. Compile with:
 *   -DVERSION_TEXT='"RKLLM SDK (version: 1.2.1)"'  embed a version string (optional)
 *   -DLEVEL=110|120|121                            which release's symbols to export
 *   -DNO_INIT                                       leave rkllm_init out
 */
#define EXPORT __attribute__((visibility("default"), used))

#ifdef VERSION_TEXT
EXPORT const char fake_version_text[] = VERSION_TEXT;
#endif

static int never(void) { return -1; }
#define STUB(name) EXPORT int name(void) { return never(); }

#ifndef NO_INIT
STUB(rkllm_init)
#endif
STUB(rkllm_createDefaultParam)
STUB(rkllm_destroy)
STUB(rkllm_run)
STUB(rkllm_run_async)
STUB(rkllm_abort)
STUB(rkllm_is_running)
STUB(rkllm_load_lora)
STUB(rkllm_load_prompt_cache)
STUB(rkllm_release_prompt_cache)
#if LEVEL >= 120
STUB(rkllm_clear_kv_cache)
STUB(rkllm_set_chat_template)
#endif
#if LEVEL >= 121
STUB(rkllm_get_kv_cache_size)
STUB(rkllm_set_function_tools)
STUB(rkllm_set_cross_attn_params)
#endif
