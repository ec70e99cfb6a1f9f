// What the fake driver reads from a PTX module at cuModuleLoadData: the ISA
// version and target, and per `.entry` its parameters (size, alignment,
// whether nvcc marked it a pointer), its `.maxntid` launch bound and the
// static shared memory it uses. Only what a driver would check at load and
// launch time; the code itself runs host-compiled (emu/README.md).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace emu::ptx {

struct Param {
    size_t size = 0;
    size_t align = 0;
    bool pointer = false;  // `.ptr`: nvcc's mark on a kernel pointer parameter
};

struct Entry {
    std::string name;
    std::vector<Param> params;
    unsigned maxntid = 0;  // product of .maxntid's dimensions; 0 when absent
    size_t static_shared = 0;
};

struct Module {
    int version_major = 0;
    int version_minor = 0;
    std::string target;  // e.g. sm_90a
    std::vector<Entry> entries;
};

// Parses `text`; on failure returns false with a message in *error.
bool parse(const std::string& text, Module* out, std::string* error);

}  // namespace emu::ptx
