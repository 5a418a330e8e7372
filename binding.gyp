{
  "targets": [
    {
      "target_name": "ferry_native",
      "sources": ["native/ferry_native.c"],
      "depends": ["native/uapi.h"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "ferry_dataplane",
      "sources": ["native/dataplane/dp_addon.c", "native/dataplane/dp_wire.c", "native/dataplane/dp_fault.c", "native/dataplane/dp_answer.c", "native/dataplane/dp_precopy.c", "native/dataplane/dp_uffd.c", "native/dataplane/dp_file.c", "native/dataplane/dp_load.c", "native/dataplane/dp_check.c", "native/dataplane/dp_scan.c", "native/dataplane/dp_digest.c", "native/dataplane/dp_pool.c"],
      "depends": ["native/dataplane/dp.h", "native/uapi.h"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11", "-pthread"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
