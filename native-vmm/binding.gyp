{
  "targets": [
    {
      "target_name": "moat_native",
      "sources": ["src/addon.cc", "src/tap.cc", "src/datapath.cc", "src/host-sockets.cc", "src/listeners.cc", "src/dns-sockets.cc", "src/link.cc", "src/vhost-user.cc", "src/packet.cc", "src/link-middleware.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=9", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc!": ["-fno-exceptions"]
    },
    {
      "target_name": "moat-helper",
      "type": "executable",
      "sources": ["src/helper.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    },
    {
      "target_name": "moat-sandbox",
      "type": "executable",
      "sources": ["sandbox/moat-sandbox.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra"]
    }
  ]
}
