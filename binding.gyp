{
  "targets": [
    {
      "target_name": "ferry_native",
      "sources": ["native/ferry_native.c"],
      "depends": ["native/uapi.h"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
