#include "ptx.h"

#include <cctype>
#include <cstdlib>
#include <map>
#include <sstream>

namespace emu::ptx {
namespace {

size_t type_size(const std::string& t) {
    if (t.size() < 3 || t[0] != '.') return 0;
    const char k = t[1];
    if (k != 'u' && k != 's' && k != 'b' && k != 'f') return 0;
    const int bits = std::atoi(t.c_str() + 2);
    switch (bits) {
        case 8: return 1;
        case 16: return 2;
        case 32: return 4;
        case 64: return 8;
        default: return 0;
    }
}

std::vector<std::string> tokens(const std::string& s) {
    std::vector<std::string> out;
    std::string cur;
    for (char c : s) {
        if (std::isspace(static_cast<unsigned char>(c)) || c == ',' || c == ';') {
            if (!cur.empty()) out.push_back(cur);
            cur.clear();
        } else {
            cur.push_back(c);
        }
    }
    if (!cur.empty()) out.push_back(cur);
    return out;
}

// `.param [.align N] .TYPE [.ptr [.space] [.align N]] NAME[COUNT]`
bool parse_param(const std::string& line, Param* p, std::string* err) {
    const std::vector<std::string> t = tokens(line);
    size_t i = 1;  // after ".param"
    size_t align = 0;
    if (i + 1 < t.size() && t[i] == ".align") {
        align = std::strtoul(t[i + 1].c_str(), nullptr, 10);
        i += 2;
    }
    if (i >= t.size()) {
        *err = "truncated .param: " + line;
        return false;
    }
    const size_t elem = type_size(t[i]);
    if (elem == 0) {
        *err = "unknown .param type in: " + line;
        return false;
    }
    ++i;
    bool pointer = false;
    while (i < t.size() && t[i][0] == '.') {
        if (t[i] == ".ptr") pointer = true;
        if (t[i] == ".align") ++i;  // the pointee's alignment, not the parameter's
        ++i;
    }
    if (i >= t.size()) {
        *err = "a .param without a name: " + line;
        return false;
    }
    size_t count = 1;
    const std::string& name = t[i];
    const size_t lb = name.find('[');
    if (lb != std::string::npos) count = std::strtoul(name.c_str() + lb + 1, nullptr, 10);
    p->size = elem * count;
    p->align = align != 0 ? align : elem;
    p->pointer = pointer;
    return true;
}

// `.shared [.align N] .TYPE NAME[COUNT];` -> (name, bytes)
bool parse_shared(const std::string& line, std::string* name, size_t* bytes) {
    const std::vector<std::string> t = tokens(line);
    size_t i = 0;
    while (i < t.size() && t[i] != ".shared") ++i;
    if (i >= t.size()) return false;
    ++i;
    size_t elem = 0;
    for (; i < t.size(); ++i) {
        if (t[i] == ".align") {
            ++i;
            continue;
        }
        if (t[i][0] == '.') {
            const size_t s = type_size(t[i]);
            if (s != 0) elem = s;
            continue;
        }
        break;
    }
    if (i >= t.size() || elem == 0) return false;
    const std::string& n = t[i];
    const size_t lb = n.find('[');
    size_t count = 1;
    if (lb != std::string::npos) {
        count = std::strtoul(n.c_str() + lb + 1, nullptr, 10);
        *name = n.substr(0, lb);
    } else {
        *name = n;
    }
    *bytes = elem * count;
    return true;
}

std::string trim(const std::string& s) {
    size_t a = 0;
    size_t b = s.size();
    while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
    while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
    return s.substr(a, b - a);
}

}  // namespace

bool parse(const std::string& text, Module* out, std::string* error) {
    std::istringstream in(text);
    std::string raw;
    std::map<std::string, size_t> module_shared;  // module-scope .shared symbols
    Entry* cur = nullptr;
    enum { Outside, Params, Between, Body } state = Outside;
    int depth = 0;
    std::string body;
    auto close_entry = [&] {
        if (cur == nullptr) return;
        for (const auto& [name, bytes] : module_shared) {
            if (body.find(name) != std::string::npos) cur->static_shared += bytes;
        }
        cur = nullptr;
        body.clear();
    };
    while (std::getline(in, raw)) {
        std::string line = trim(raw);
        const size_t cmt = line.find("//");
        if (cmt != std::string::npos) line = trim(line.substr(0, cmt));
        if (line.empty()) continue;
        switch (state) {
            case Outside:
                if (line.rfind(".version", 0) == 0) {
                    const std::string v = trim(line.substr(8));
                    out->version_major = std::atoi(v.c_str());
                    const size_t dot = v.find('.');
                    out->version_minor = dot == std::string::npos ? 0 : std::atoi(v.c_str() + dot + 1);
                } else if (line.rfind(".target", 0) == 0) {
                    out->target = tokens(line.substr(7)).empty() ? "" : tokens(line.substr(7))[0];
                } else if (line.find(".entry ") != std::string::npos) {
                    const size_t at = line.find(".entry ") + 7;
                    const size_t paren = line.find('(', at);
                    out->entries.emplace_back();
                    cur = &out->entries.back();
                    cur->name = trim(line.substr(at, paren == std::string::npos ? std::string::npos
                                                                                : paren - at));
                    state = Params;
                    if (line.find(')') != std::string::npos) state = Between;
                } else if (line.find(".shared") != std::string::npos &&
                           line.find(".extern") == std::string::npos) {
                    std::string name;
                    size_t bytes = 0;
                    if (parse_shared(line, &name, &bytes)) module_shared[name] = bytes;
                }
                break;
            case Params:
                if (line[0] == ')') {
                    state = Between;
                    break;
                }
                if (line.rfind(".param", 0) == 0) {
                    Param p;
                    if (!parse_param(line, &p, error)) return false;
                    cur->params.push_back(p);
                }
                if (line.find(')') != std::string::npos) state = Between;
                break;
            case Between:
                if (line.rfind(".maxntid", 0) == 0) {
                    unsigned prod = 1;
                    for (const std::string& d : tokens(line.substr(8))) {
                        prod *= static_cast<unsigned>(std::strtoul(d.c_str(), nullptr, 10));
                    }
                    cur->maxntid = prod;
                } else if (line[0] == '{') {
                    state = Body;
                    depth = 1;
                } else if (line[0] == ';') {
                    // a declaration without a body
                    cur = nullptr;
                    state = Outside;
                }
                break;
            case Body:
                for (char c : line) {
                    if (c == '{') ++depth;
                    if (c == '}') --depth;
                }
                if (line.rfind(".shared", 0) == 0) {
                    std::string name;
                    size_t bytes = 0;
                    if (parse_shared(line, &name, &bytes)) cur->static_shared += bytes;
                } else {
                    body += line;
                    body += '\n';
                }
                if (depth == 0) {
                    close_entry();
                    state = Outside;
                }
                break;
        }
    }
    if (state != Outside) {
        *error = "the PTX ends inside an .entry";
        return false;
    }
    if (out->version_major == 0) {
        *error = "no .version directive (is this PTX text?)";
        return false;
    }
    return true;
}

}  // namespace emu::ptx
