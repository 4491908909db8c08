// addon.cc — the Node-API surface of native-vmm.
//
//   openTap(netnsPath, ifname, create) -> fd  create (or, create false, only attach to) a TAP
//                                             device inside a network namespace
//   interfaceInfo(ifname) -> {index, mtu, up, running, ethernet, driver}   an interface of ours
//   new Datapath(memoryU8)                    the data path of one engine (see datapath.cc); the
//                                             memory's layout is layout.gen.h (gen-layout.mjs)
//     .attachTap(fd) .attachStream(path) .attachVhostUser(path, mtu) .attachPacket(ifname, mtu)
//     .start(onReady)  .pump()  .flush()  .liveSockets()  .close()
//     .listen(id, proto, family, addr16, port, dualStack) -> bound port | -errno   .unlisten(id)
//     .capturePcap(path, maxBytes)  .injectFaults(spec)   decorators on the attached link
//                                                         (link-middleware.h)
//
// Datapath.start() watches the data path's epoll fd with a uv_poll handle on the calling
// thread's event loop (a worker's), and calls onReady() when anything is readable. The shared
// memory must be a Uint8Array over the engine's fixed-size shared WebAssembly.Memory buffer: the
// pointer taken at construction stays valid because that memory never grows, and the object
// keeps a reference to the array so it is not collected first.
#include <napi.h>
#include <uv.h>

#include <cstring>
#include <memory>

#include "datapath.h"
#include "link-middleware.h"
#include "layout.gen.h"
#include "tap.h"

namespace {

using moat::Datapath;
namespace lay = moat::lay;

class DatapathWrap : public Napi::ObjectWrap<DatapathWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Datapath",
                       {InstanceMethod("attachTap", &DatapathWrap::AttachTap),
                        InstanceMethod("attachStream", &DatapathWrap::AttachStream),
                        InstanceMethod("attachVhostUser", &DatapathWrap::AttachVhostUser),
                        InstanceMethod("attachPacket", &DatapathWrap::AttachPacket),
                        InstanceMethod("capturePcap", &DatapathWrap::CapturePcap),
                        InstanceMethod("injectFaults", &DatapathWrap::InjectFaults),
                        InstanceMethod("start", &DatapathWrap::Start),
                        InstanceMethod("pump", &DatapathWrap::Pump),
                        InstanceMethod("flush", &DatapathWrap::Flush),
                        InstanceMethod("liveSockets", &DatapathWrap::LiveSockets),
                        InstanceMethod("listen", &DatapathWrap::Listen),
                        InstanceMethod("unlisten", &DatapathWrap::Unlisten),
                        InstanceMethod("dnsOpen", &DatapathWrap::DnsOpen),
                        InstanceMethod("dnsClose", &DatapathWrap::DnsClose),
                        InstanceMethod("dnsSend", &DatapathWrap::DnsSend),
                        InstanceMethod("dnsTake", &DatapathWrap::DnsTake),
                        InstanceMethod("close", &DatapathWrap::Close)});
  }

  DatapathWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DatapathWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray()) {
      Napi::TypeError::New(env, "new Datapath(memoryU8: Uint8Array)").ThrowAsJavaScriptException();
      return;
    }
    auto u8 = info[0].As<Napi::Uint8Array>();
    memRef_ = Napi::Persistent(info[0].As<Napi::Object>());
    uint8_t* mem = u8.Data();
    const uint64_t bytes = u8.ByteLength();
    if (lay::IN_BUF_BASE + static_cast<uint64_t>(lay::IN_SLOTS) * lay::SLOT_BYTES > bytes) {
      Napi::RangeError::New(env, "the memory given is smaller than layout.gen.h says (a stale native build? npm run build:native)").ThrowAsJavaScriptException();
      return;
    }
    dp_ = std::make_unique<Datapath>(mem, static_cast<uint32_t>(bytes));
  }

  // Without close() (the process or the worker exiting: the object is finalized during the
  // environment's teardown), the handle is closed without a callback and its few bytes are left:
  // by the time the loop runs close callbacks, this addon may be unloaded, and a callback in it
  // would be a jump into unmapped code (exit status 139 for an embedder calling process.exit()).
  ~DatapathWrap() override { stopPoll(false); }

 private:
  Napi::Value AttachTap(const Napi::CallbackInfo& info) {
    if (!dp_ || !info[0].IsNumber()) {
      Napi::TypeError::New(info.Env(), "attachTap(fd: number)").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    dp_->setLink(moat::newTapLink(info[0].As<Napi::Number>().Int32Value()));
    return info.Env().Undefined();
  }
  // attachStream(path): listen at a unix socket path for the VMM.
  Napi::Value AttachStream(const Napi::CallbackInfo& info) {
    if (!dp_ || !info[0].IsString()) {
      Napi::TypeError::New(info.Env(), "attachStream(path: string)").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    std::string err;
    return attached(info.Env(), moat::newStreamLink(info[0].As<Napi::String>(), err), err);
  }
  // attachVhostUser(path, mtu): listen at a unix socket path as a vhost-user-net back-end.
  Napi::Value AttachVhostUser(const Napi::CallbackInfo& info) {
    if (!dp_ || !info[0].IsString() || !info[1].IsNumber()) {
      Napi::TypeError::New(info.Env(), "attachVhostUser(path: string, mtu: number)").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    std::string err;
    return attached(info.Env(), moat::newVhostUserLink(info[0].As<Napi::String>(), info[1].As<Napi::Number>().Uint32Value(), err), err);
  }
  // attachPacket(ifname, mtu): serve an interface someone else holds from its kernel side.
  Napi::Value AttachPacket(const Napi::CallbackInfo& info) {
    if (!dp_ || !info[0].IsString() || !info[1].IsNumber()) {
      Napi::TypeError::New(info.Env(), "attachPacket(ifname: string, mtu: number)").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    std::string err;
    return attached(info.Env(), moat::newPacketLink(info[0].As<Napi::String>(), info[1].As<Napi::Number>().Uint32Value(), err), err);
  }
  // capturePcap(path, maxBytes): record the attached link's frames (0 = no bound).
  Napi::Value CapturePcap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!dp_ || !info[0].IsString() || !info[1].IsNumber() || info[1].As<Napi::Number>().DoubleValue() < 0) {
      Napi::TypeError::New(env, "capturePcap(path: string, maxBytes: number >= 0)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    const std::string path = info[0].As<Napi::String>();
    const uint64_t max = static_cast<uint64_t>(info[1].As<Napi::Number>().DoubleValue());
    std::string err = "no link is attached";
    if (!dp_->wrapLink([&](moat::Link* in, int, uint64_t) { return moat::newPcapLink(in, path, max, err); }))
      Napi::Error::New(env, err).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // injectFaults({drop, dup, reorder, delay, corrupt: 0..1, delayMs, blackoutMs, seed, toEngine, toGuest}).
  Napi::Value InjectFaults(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!dp_ || !info[0].IsObject()) {
      Napi::TypeError::New(env, "injectFaults(spec: object)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Object o = info[0].As<Napi::Object>();
    moat::FaultSpec f;
    bool bad = false;
    auto rate = [&](const char* k, double& out) {
      Napi::Value v = o.Get(k);
      if (v.IsUndefined()) return;
      const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
      if (!(d >= 0 && d <= 1)) bad = true;
      else out = d;
    };
    rate("drop", f.drop);
    rate("dup", f.dup);
    rate("reorder", f.reorder);
    rate("delay", f.delay);
    rate("corrupt", f.corrupt);
    if (o.Get("delayMs").IsNumber()) f.delayMs = o.Get("delayMs").As<Napi::Number>().Uint32Value();
    if (o.Get("blackoutMs").IsNumber()) f.blackoutMs = o.Get("blackoutMs").As<Napi::Number>().Uint32Value();
    if (o.Get("seed").IsNumber()) f.seed = static_cast<uint64_t>(o.Get("seed").As<Napi::Number>().DoubleValue());
    if (o.Get("toEngine").IsBoolean()) f.toEngine = o.Get("toEngine").As<Napi::Boolean>();
    if (o.Get("toGuest").IsBoolean()) f.toGuest = o.Get("toGuest").As<Napi::Boolean>();
    if (bad) {
      Napi::RangeError::New(env, "injectFaults: rates are numbers from 0 to 1").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (!dp_->wrapLink([&](moat::Link* in, int epfd, uint64_t base) { return moat::newFaultLink(in, f, epfd, base); }))
      Napi::Error::New(env, "no link is attached").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Value attached(Napi::Env env, moat::Link* link, const std::string& err) {
    if (!link) Napi::Error::New(env, err).ThrowAsJavaScriptException();
    else dp_->setLink(link);
    return env.Undefined();
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!dp_ || !info[0].IsFunction()) {
      Napi::TypeError::New(env, "start(onReady: () => void)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (poll_) return env.Undefined();
    onReady_ = Napi::Persistent(info[0].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    uv_poll_init(loop, poll_, dp_->epollFd());
    poll_->data = this;
    env_ = env;
    uv_poll_start(poll_, UV_READABLE, [](uv_poll_t* h, int status, int events) {
      auto* self = static_cast<DatapathWrap*>(h->data);
      Napi::HandleScope scope(self->env_);
      self->onReady_.Call({});
      // An exception in onReady surfaces as the worker's uncaught exception.
    });
    return env.Undefined();
  }

  Napi::Value Pump(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), dp_ ? dp_->pump() : 0);
  }
  Napi::Value Flush(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), dp_ ? dp_->flush() : 0);
  }
  Napi::Value LiveSockets(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), dp_ ? dp_->liveSockets() : 0);
  }
  // listen(id, "tcp"|"udp", family 4|6, addr: Uint8Array(16), port, dualStack) -> bound port, or -errno
  Napi::Value Listen(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!dp_ || info.Length() < 6 || !info[0].IsNumber() || !info[1].IsString() || !info[2].IsNumber() || !info[3].IsTypedArray() ||
        !info[4].IsNumber() || !info[5].IsBoolean() || info[3].As<Napi::Uint8Array>().ByteLength() != 16) {
      Napi::TypeError::New(env, "listen(id: number, proto: 'tcp'|'udp', family: 4|6, addr: Uint8Array(16), port: number, dualStack: boolean)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    const std::string proto = info[1].As<Napi::String>();
    const int r = dp_->listenOn(info[0].As<Napi::Number>().Uint32Value(), proto == "tcp", info[2].As<Napi::Number>().Uint32Value(),
                                info[3].As<Napi::Uint8Array>().Data(), info[4].As<Napi::Number>().Uint32Value(), info[5].As<Napi::Boolean>().Value());
    return Napi::Number::New(env, r);
  }
  // dnsOpen(family 4|6, addr: Uint8Array(16), port) -> id | -errno
  Napi::Value DnsOpen(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!dp_ || info.Length() < 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsNumber() || info[1].As<Napi::Uint8Array>().ByteLength() != 16) {
      Napi::TypeError::New(env, "dnsOpen(family: 4|6, addr: Uint8Array(16), port: number)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, dp_->dnsOpen(info[0].As<Napi::Number>().Uint32Value(), info[1].As<Napi::Uint8Array>().Data(), info[2].As<Napi::Number>().Uint32Value()));
  }
  Napi::Value DnsClose(const Napi::CallbackInfo& info) {
    if (dp_ && info.Length() >= 1 && info[0].IsNumber()) dp_->dnsClose(info[0].As<Napi::Number>().Uint32Value());
    return info.Env().Undefined();
  }
  // dnsSend(id, data: Uint8Array) -> 0 | -errno
  Napi::Value DnsSend(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!dp_ || info.Length() < 2 || !info[0].IsNumber() || !info[1].IsTypedArray()) {
      Napi::TypeError::New(env, "dnsSend(id: number, data: Uint8Array)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    auto data = info[1].As<Napi::Uint8Array>();
    return Napi::Number::New(env, dp_->dnsSend(info[0].As<Napi::Number>().Uint32Value(), data.Data(), static_cast<uint32_t>(data.ByteLength())));
  }
  // dnsTake(out: Uint8Array) -> bytes of entries written
  Napi::Value DnsTake(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!dp_ || info.Length() < 1 || !info[0].IsTypedArray()) {
      Napi::TypeError::New(env, "dnsTake(out: Uint8Array)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    auto out = info[0].As<Napi::Uint8Array>();
    return Napi::Number::New(env, dp_->dnsTake(out.Data(), static_cast<uint32_t>(out.ByteLength())));
  }
  Napi::Value Unlisten(const Napi::CallbackInfo& info) {
    if (dp_ && info.Length() >= 1 && info[0].IsNumber()) dp_->unlisten(info[0].As<Napi::Number>().Uint32Value());
    return info.Env().Undefined();
  }
  // close() -> fds whose close was deferred (link.h, deferClose): the caller closes them
  Napi::Value Close(const Napi::CallbackInfo& info) {
    stopPoll();
    if (dp_) dp_->closeAll(true);
    std::vector<int> fds = moat::takeDeferredCloses();
    Napi::Array out = Napi::Array::New(info.Env(), fds.size());
    for (uint32_t i = 0; i < fds.size(); i++) out.Set(i, Napi::Number::New(info.Env(), fds[i]));
    return out;
  }

  void stopPoll(bool freeHandle = true) {
    if (!poll_) return;
    uv_poll_stop(poll_);
    if (freeHandle) uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    else uv_close(reinterpret_cast<uv_handle_t*>(poll_), nullptr);
    poll_ = nullptr;
    if (freeHandle) onReady_.Reset();
  }

  std::unique_ptr<Datapath> dp_;
  Napi::ObjectReference memRef_;
  Napi::FunctionReference onReady_;
  uv_poll_t* poll_ = nullptr;
  napi_env env_ = nullptr;
};

Napi::Value OpenTap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsBoolean()) {
    Napi::TypeError::New(env, "openTap(netnsPath: string, ifname: string, create: boolean)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string err;
  int fd = moat::openTapInNetns(info[0].As<Napi::String>(), info[1].As<Napi::String>(), info[2].As<Napi::Boolean>().Value(), err);
  if (fd < 0) {
    Napi::Error e = Napi::Error::New(env, err);
    e.Set("errno", Napi::Number::New(env, -fd));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value InterfaceInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "interfaceInfo(ifname: string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string err;
  moat::InterfaceInfo i;
  const int r = moat::interfaceInfo(info[0].As<Napi::String>(), i, err);
  if (r < 0) {
    Napi::Error e = Napi::Error::New(env, err);
    e.Set("errno", Napi::Number::New(env, -r));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("index", Napi::Number::New(env, i.index));
  o.Set("mtu", Napi::Number::New(env, i.mtu));
  o.Set("up", Napi::Boolean::New(env, i.up));
  o.Set("running", Napi::Boolean::New(env, i.running));
  o.Set("ethernet", Napi::Boolean::New(env, i.ethernet));
  o.Set("driver", Napi::String::New(env, i.driver));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("openTap", Napi::Function::New(env, OpenTap));
  exports.Set("interfaceInfo", Napi::Function::New(env, InterfaceInfo));
  exports.Set("Datapath", DatapathWrap::Init(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(moat_native, Init)
