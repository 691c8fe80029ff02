// libFuzzer's entry for programs that keep their own main ("Using libFuzzer as a library" in LLVM's
// LibFuzzer.rst).
// The fuzz targets call it only when built with `-sanitize=fuzzer -D FUZZING`, which links the
// runtime; SwiftPM names each executable's main itself, so libFuzzer's own main cannot be used.
#ifndef TW_CLIBFUZZER_SHIM_H
#define TW_CLIBFUZZER_SHIM_H
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
#endif
