// Driver entry points: streams, events, stream capture and CUDA graphs.
//
// A stream is an ordered queue: in deferred mode (the default) its work runs
// only when something needs the result (a synchronize, a pageable
// device-to-host copy, another stream's event wait being drained), so a
// missing cross-stream join shows up as stale or NaN data. A capture records
// the work instead, in call order (a valid topological order of the graph),
// and a graph launch replays it as one operation.
#include <algorithm>
#include <cstring>
#include <memory>

#include "state.h"

using namespace emu::drv;

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

CUresult new_stream(CUstream* out, unsigned flags) {
    if (out == nullptr) return CUDA_ERROR_INVALID_VALUE;
    CUresult err = CUDA_SUCCESS;
    Context* c = checked_current(&err);
    if (c == nullptr) return err;
    auto s = std::make_shared<Stream>();
    s->ctx = c;
    s->flags = flags;
    Stream* raw = s.get();
    c->streams.emplace(raw, std::move(s));
    *out = reinterpret_cast<CUstream>(raw);
    return CUDA_SUCCESS;
}

Stream* checked_stream(CUstream hs, CUresult* err) {
    Context* c = ctx_for_stream(hs, err);
    if (c == nullptr) return nullptr;
    Stream* s = stream_of(hs, c);
    if (s == nullptr) *err = CUDA_ERROR_INVALID_HANDLE;
    return s;
}

void leave_capture(Capture& cap) {
    if (cap.origin != nullptr) cap.origin->capture = nullptr;
    for (Stream* j : cap.joined) {
        j->capture = nullptr;
        j->unjoined_node = -1;
    }
    Context& c = cap.origin != nullptr ? *cap.origin->ctx : primary(0);
    for (Event* e : c.events) {
        if (e->captured == &cap) {
            e->captured = nullptr;
            e->captured_stream = nullptr;
        }
    }
    captures().erase(&cap);
}

}  // namespace

EMU_EXPORT CUresult cuStreamCreate(CUstream* out, unsigned int flags) {
    EMU_API("cuStreamCreate");
    return new_stream(out, flags);
}

EMU_EXPORT CUresult cuStreamCreateWithPriority(CUstream* out, unsigned int flags, int) {
    EMU_API("cuStreamCreateWithPriority");
    return new_stream(out, flags);
}

EMU_EXPORT CUresult cuStreamDestroy_v2(CUstream hs) {
    EMU_API("cuStreamDestroy_v2");
    if (hs == nullptr || hs == CU_STREAM_LEGACY) return CUDA_ERROR_INVALID_HANDLE;
    Stream* s = stream_of(hs, nullptr);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    Context& c = *s->ctx;
    if (s->capture != nullptr) {
        invalidate(*s->capture, "a capturing stream was destroyed");
        if (s->capture->origin == s) {
            Capture* cap = s->capture;
            if (cap->graph != nullptr) {
                graphs().erase(cap->graph);
                for (UserObject* o : cap->graph->objects) release(o, 1);
                delete cap->graph;
            }
            leave_capture(*cap);
            delete cap;
        } else {
            s->capture->joined.erase(s);
            s->capture = nullptr;
        }
    }
    // Work already enqueued still runs (the driver releases the stream when
    // it is done).
    drain(*s);
    s->destroyed = true;
    c.streams.erase(s);
    return c.sticky;
}

EMU_EXPORT CUresult cuStreamSynchronize(CUstream hs) {
    EMU_API("cuStreamSynchronize");
    emu::count(emu::Counter::StreamSyncs);
    CUresult err = CUDA_SUCCESS;
    Stream* s = checked_stream(hs, &err);
    if (s == nullptr) return err;
    if (s->capture != nullptr) {
        invalidate(*s->capture, "cuStreamSynchronize on the capturing stream");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (CUresult r = forbid_in_capture(*s->ctx, "cuStreamSynchronize"); r != CUDA_SUCCESS) {
        return r;
    }
    drain(*s);
    return s->ctx->sticky;
}

EMU_EXPORT CUresult cuStreamQuery(CUstream hs) {
    EMU_API("cuStreamQuery");
    CUresult err = CUDA_SUCCESS;
    Stream* s = checked_stream(hs, &err);
    if (s == nullptr) return err;
    if (s->capture != nullptr) {
        invalidate(*s->capture, "cuStreamQuery on the capturing stream");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (CUresult r = forbid_in_capture(*s->ctx, "cuStreamQuery"); r != CUDA_SUCCESS) return r;
    // A query lets the emulated device catch up, so polling loops end.
    drain(*s);
    return s->ctx->sticky;
}

EMU_EXPORT CUresult cuStreamWaitEvent(CUstream hs, CUevent he, unsigned int) {
    EMU_API("cuStreamWaitEvent");
    CUresult err = CUDA_SUCCESS;
    Stream* s = checked_stream(hs, &err);
    if (s == nullptr) return err;
    Event* e = event_of(he);
    if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (e->captured != nullptr) {
        Capture& cap = *e->captured;
        if (s->capture == nullptr) {
            if (s->legacy) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
            // Forks the capture into this stream.
            s->capture = &cap;
            s->unjoined_node = -1;
            cap.joined.insert(s);
            return cap.invalid ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED : CUDA_SUCCESS;
        }
        if (s->capture != &cap) {
            invalidate(cap, "a wait merges two capture sequences");
            invalidate(*s->capture, "a wait merges two capture sequences");
            return CUDA_ERROR_STREAM_CAPTURE_MERGE;
        }
        // A join: the waiting stream now depends on everything the recording
        // stream captured up to the record.
        Stream* from = e->captured_stream;
        if (s == cap.origin && from != nullptr && from != s &&
            from->unjoined_node < static_cast<long>(e->captured_pos)) {
            from->unjoined_node = -1;
        }
        return cap.invalid ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED : CUDA_SUCCESS;
    }
    if (s->capture != nullptr) {
        if (e->records == 0) return CUDA_SUCCESS;
        invalidate(*s->capture, "a captured stream waits on an event recorded outside the capture");
        return CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
    }
    if (e->records == 0 || !e->rec_stream) return CUDA_SUCCESS;
    std::vector<Prereq> pre{Prereq{e->rec_stream, e->rec_seq}};
    return enqueue(*s, "cuStreamWaitEvent", {}, std::move(pre));
}

EMU_EXPORT CUresult cuStreamIsCapturing(CUstream hs, CUstreamCaptureStatus* status) {
    EMU_API("cuStreamIsCapturing");
    if (status == nullptr) return CUDA_ERROR_INVALID_VALUE;
    CUresult err = CUDA_SUCCESS;
    Stream* s = checked_stream(hs, &err);
    if (s == nullptr) return err;
    if (s->capture == nullptr) {
        *status = CU_STREAM_CAPTURE_STATUS_NONE;
    } else {
        *status = s->capture->invalid ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                      : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    }
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuStreamGetCaptureInfo_v3(CUstream hs, CUstreamCaptureStatus* status,
                                              cuuint64_t* id, CUgraph* graph,
                                              const CUgraphNode** deps,
                                              const CUgraphEdgeData** edges, size_t* ndeps) {
    EMU_API("cuStreamGetCaptureInfo_v3");
    if (status == nullptr) return CUDA_ERROR_INVALID_VALUE;
    CUresult err = CUDA_SUCCESS;
    Stream* s = checked_stream(hs, &err);
    if (s == nullptr) return err;
    if (s->capture == nullptr) {
        *status = CU_STREAM_CAPTURE_STATUS_NONE;
    } else {
        *status = s->capture->invalid ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                      : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    }
    if (id != nullptr) *id = reinterpret_cast<uintptr_t>(s->capture);
    if (graph != nullptr) {
        *graph = s->capture != nullptr ? reinterpret_cast<CUgraph>(s->capture->graph) : nullptr;
    }
    if (deps != nullptr) *deps = nullptr;
    if (edges != nullptr) *edges = nullptr;
    if (ndeps != nullptr) *ndeps = 0;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuStreamBeginCapture_v2(CUstream hs, CUstreamCaptureMode mode) {
    EMU_API("cuStreamBeginCapture_v2");
    CUresult err = CUDA_SUCCESS;
    Stream* s = checked_stream(hs, &err);
    if (s == nullptr) return err;
    if (s->legacy) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (s->capture != nullptr) return CUDA_ERROR_ILLEGAL_STATE;
    if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
        mode != CU_STREAM_CAPTURE_MODE_RELAXED) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    auto* cap = new Capture();
    cap->origin = s;
    cap->mode = mode;
    cap->thread = std::this_thread::get_id();
    cap->graph = new Graph();
    graphs().insert(cap->graph);
    s->capture = cap;
    captures().insert(cap);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuStreamEndCapture(CUstream hs, CUgraph* out) {
    EMU_API("cuStreamEndCapture");
    if (out == nullptr) return CUDA_ERROR_INVALID_VALUE;
    *out = nullptr;
    CUresult err = CUDA_SUCCESS;
    Stream* s = checked_stream(hs, &err);
    if (s == nullptr) return err;
    Capture* cap = s->capture;
    if (cap == nullptr) return CUDA_ERROR_ILLEGAL_STATE;
    if (cap->origin != s) {
        invalidate(*cap, "cuStreamEndCapture on a stream that joined the capture, not its origin");
        return CUDA_ERROR_STREAM_CAPTURE_UNMATCHED;
    }
    if (cap->mode != CU_STREAM_CAPTURE_MODE_RELAXED && cap->thread != std::this_thread::get_id()) {
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    }
    CUresult r = CUDA_SUCCESS;
    if (cap->invalid) {
        r = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    } else {
        for (Stream* j : cap->joined) {
            if (j->unjoined_node >= 0) {
                say("cuStreamEndCapture: a forked stream's captured work was never joined back "
                    "into the origin stream");
                r = CUDA_ERROR_STREAM_CAPTURE_UNJOINED;
            }
        }
    }
    Graph* g = cap->graph;
    cap->graph = nullptr;
    if (r == CUDA_SUCCESS) {
        g->nodes = std::move(cap->nodes);
        *out = reinterpret_cast<CUgraph>(g);
    } else if (g != nullptr) {
        // No graph for a failed capture: its user objects are released.
        graphs().erase(g);
        for (UserObject* o : g->objects) release(o, 1);
        delete g;
    }
    leave_capture(*cap);
    delete cap;
    return r;
}

// ---- events ----

EMU_EXPORT CUresult cuEventCreate(CUevent* out, unsigned int flags) {
    EMU_API("cuEventCreate");
    if (out == nullptr) return CUDA_ERROR_INVALID_VALUE;
    CUresult err = CUDA_SUCCESS;
    Context* c = checked_current(&err);
    if (c == nullptr) return err;
    auto* e = new Event();
    e->ctx = c;
    e->flags = flags;
    c->events.insert(e);
    *out = reinterpret_cast<CUevent>(e);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuEventDestroy_v2(CUevent he) {
    EMU_API("cuEventDestroy_v2");
    Event* e = event_of(he);
    if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    // A pending record still completes (and must not touch freed memory).
    if (e->records > e->completed && e->rec_stream) drain(*e->rec_stream, e->rec_seq);
    e->ctx->events.erase(e);
    delete e;
    return CUDA_SUCCESS;
}

namespace {
CUresult record(CUevent he, CUstream hs) {
    CUresult err = CUDA_SUCCESS;
    Stream* s = checked_stream(hs, &err);
    if (s == nullptr) return err;
    Event* e = event_of(he);
    if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (s->capture != nullptr) {
        if (s->capture->invalid) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        e->captured = s->capture;
        e->captured_stream = s;
        e->captured_pos = s->capture->nodes.size();
        return CUDA_SUCCESS;
    }
    e->captured = nullptr;
    e->captured_stream = nullptr;
    const uint64_t id = ++e->records;
    CUresult r = enqueue(*s, "cuEventRecord", [e, id] {
        e->completed = id;
        e->time_ms = now_ms();
    });
    if (r != CUDA_SUCCESS) return r;
    e->rec_stream = shared(*s);
    e->rec_seq = s->enq_seq;
    return CUDA_SUCCESS;
}
}  // namespace

EMU_EXPORT CUresult cuEventRecord(CUevent he, CUstream hs) {
    EMU_API("cuEventRecord");
    return record(he, hs);
}

EMU_EXPORT CUresult cuEventRecordWithFlags(CUevent he, CUstream hs, unsigned int) {
    EMU_API("cuEventRecordWithFlags");
    return record(he, hs);
}

EMU_EXPORT CUresult cuEventSynchronize(CUevent he) {
    EMU_API("cuEventSynchronize");
    emu::count(emu::Counter::EventSyncs);
    Event* e = event_of(he);
    if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (e->ctx->sticky != CUDA_SUCCESS) return e->ctx->sticky;
    if (e->captured != nullptr) return CUDA_ERROR_CAPTURED_EVENT;
    if (CUresult r = forbid_in_capture(*e->ctx, "cuEventSynchronize"); r != CUDA_SUCCESS) return r;
    if (e->records > 0 && e->rec_stream) drain(*e->rec_stream, e->rec_seq);
    return e->ctx->sticky;
}

EMU_EXPORT CUresult cuEventQuery(CUevent he) {
    EMU_API("cuEventQuery");
    Event* e = event_of(he);
    if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (e->ctx->sticky != CUDA_SUCCESS) return e->ctx->sticky;
    if (e->captured != nullptr) return CUDA_ERROR_CAPTURED_EVENT;
    if (CUresult r = forbid_in_capture(*e->ctx, "cuEventQuery"); r != CUDA_SUCCESS) return r;
    if (e->records > 0 && e->rec_stream) drain(*e->rec_stream, e->rec_seq);
    return e->ctx->sticky;
}

namespace {
CUresult elapsed(float* ms, CUevent hstart, CUevent hend) {
    if (ms == nullptr) return CUDA_ERROR_INVALID_VALUE;
    Event* a = event_of(hstart);
    Event* b = event_of(hend);
    if (a == nullptr || b == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if ((a->flags & CU_EVENT_DISABLE_TIMING) != 0 || (b->flags & CU_EVENT_DISABLE_TIMING) != 0) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (a->records == 0 || b->records == 0) return CUDA_ERROR_INVALID_HANDLE;
    if (a->completed != a->records || b->completed != b->records) return CUDA_ERROR_NOT_READY;
    // Host time between the two records executing: not a GPU timing.
    *ms = static_cast<float>(b->time_ms - a->time_ms);
    return CUDA_SUCCESS;
}
}  // namespace

EMU_EXPORT CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) {
    EMU_API("cuEventElapsedTime_v2");
    return elapsed(ms, a, b);
}

// cuda.h maps the old name to _v2; cudarc may still resolve the old one.
#undef cuEventElapsedTime
EMU_EXPORT CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    EMU_API("cuEventElapsedTime");
    return elapsed(ms, a, b);
}

// ---- graphs ----

EMU_EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec* out, CUgraph hg,
                                                unsigned long long) {
    EMU_API("cuGraphInstantiateWithFlags");
    if (out == nullptr) return CUDA_ERROR_INVALID_VALUE;
    Graph* g = graph_of(hg);
    if (g == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    auto* x = new GraphExec();
    x->nodes = g->nodes;
    // An executable graph holds its own references to the graph's objects.
    for (UserObject* o : g->objects) {
        ++o->refs;
        x->objects.push_back(o);
    }
    graph_execs().insert(x);
    *out = reinterpret_cast<CUgraphExec>(x);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuGraphLaunch(CUgraphExec hx, CUstream hs) {
    EMU_API("cuGraphLaunch");
    GraphExec* x = graph_exec_of(hx);
    if (x == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    CUresult err = CUDA_SUCCESS;
    Stream* s = checked_stream(hs, &err);
    if (s == nullptr) return err;
    if (inject(Inject::Launch, "cuGraphLaunch")) return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    emu::count(emu::Counter::GraphLaunches);
    Context* ctx = s->ctx;
    // The nodes as they are now: the exec may be destroyed before this runs
    // (the driver keeps a launched graph alive until it completes).
    auto nodes = std::make_shared<std::vector<Node>>(x->nodes);
    return enqueue(*s, "cuGraphLaunch", [ctx, nodes] {
        for (const Node& n : *nodes) {
            if (ctx->sticky != CUDA_SUCCESS) return;
            if (n.fn) n.fn();
        }
    });
}

EMU_EXPORT CUresult cuGraphUpload(CUgraphExec hx, CUstream hs) {
    EMU_API("cuGraphUpload");
    if (graph_exec_of(hx) == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    CUresult err = CUDA_SUCCESS;
    if (checked_stream(hs, &err) == nullptr) return err;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuGraphExecDestroy(CUgraphExec hx) {
    EMU_API("cuGraphExecDestroy");
    GraphExec* x = graph_exec_of(hx);
    if (x == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    graph_execs().erase(x);
    for (UserObject* o : x->objects) release(o, 1);
    delete x;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuGraphDestroy(CUgraph hg) {
    EMU_API("cuGraphDestroy");
    Graph* g = graph_of(hg);
    if (g == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    graphs().erase(g);
    for (UserObject* o : g->objects) release(o, 1);
    delete g;
    return CUDA_SUCCESS;
}

// ---- user objects ----

EMU_EXPORT CUresult cuUserObjectCreate(CUuserObject* out, void* ptr, CUhostFn destroy,
                                       unsigned int initial, unsigned int flags) {
    EMU_API("cuUserObjectCreate");
    if (out == nullptr || destroy == nullptr || initial == 0 ||
        flags != CU_USER_OBJECT_NO_DESTRUCTOR_SYNC) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    auto* o = new UserObject();
    o->ptr = ptr;
    o->destroy = destroy;
    o->refs = initial;
    user_objects().insert(o);
    *out = reinterpret_cast<CUuserObject>(o);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuUserObjectRetain(CUuserObject obj, unsigned int count) {
    EMU_API("cuUserObjectRetain");
    auto* o = reinterpret_cast<UserObject*>(obj);
    if (user_objects().count(o) == 0 || count == 0) return CUDA_ERROR_INVALID_VALUE;
    o->refs += count;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuUserObjectRelease(CUuserObject obj, unsigned int count) {
    EMU_API("cuUserObjectRelease");
    auto* o = reinterpret_cast<UserObject*>(obj);
    if (user_objects().count(o) == 0 || count == 0) return CUDA_ERROR_INVALID_VALUE;
    release(o, count);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuGraphRetainUserObject(CUgraph hg, CUuserObject obj, unsigned int count,
                                            unsigned int flags) {
    EMU_API("cuGraphRetainUserObject");
    Graph* g = graph_of(hg);
    auto* o = reinterpret_cast<UserObject*>(obj);
    if (g == nullptr || user_objects().count(o) == 0 || count == 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // MOVE: the graph takes over `count` of the caller's references.
    if ((flags & CU_GRAPH_USER_OBJECT_MOVE) == 0) o->refs += count;
    for (unsigned i = 0; i < count; ++i) g->objects.push_back(o);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuGraphReleaseUserObject(CUgraph hg, CUuserObject obj, unsigned int count) {
    EMU_API("cuGraphReleaseUserObject");
    Graph* g = graph_of(hg);
    auto* o = reinterpret_cast<UserObject*>(obj);
    if (g == nullptr || user_objects().count(o) == 0) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < count; ++i) {
        auto it = std::find(g->objects.begin(), g->objects.end(), o);
        if (it == g->objects.end()) return CUDA_ERROR_INVALID_VALUE;
        g->objects.erase(it);
        release(o, 1);
    }
    return CUDA_SUCCESS;
}
