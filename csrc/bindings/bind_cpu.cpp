// CPU description, ISA tier selection and the thread pool.
#include "bindings/common.h"
#include "core/threadpool.h"
#include "cpu/dispatch.h"

namespace xsil::bind {

void register_cpu(py::module_& m) {
  m.def("cpu_info", [] {
    const CpuFeatures& f = cpu_features();
    py::dict d;
    d["arch"] = f.arch;
    d["vendor"] = f.vendor;
    d["features"] = f.flags;
    py::list tl, avail;
    for (const auto& t : tiers()) {
      py::dict e;
      e["name"] = t.name;
      e["available"] = t.available;
      e["reason"] = t.reason;
      tl.append(e);
      if (t.available) avail.append(t.name);
    }
    d["tiers"] = tl;
    d["available_tiers"] = avail;
    d["tier"] = std::string(tier_name(default_tier()));
    d["threads"] = ThreadPool::global().num_threads();
    d["hardware_threads"] = ThreadPool::hardware_threads();
    return d;
  }, "Features found, ISA tiers in this build (with availability) and the tier in use.");
  m.def("set_isa", [](const std::string& tier) { set_default_tier(tier); }, py::arg("tier"),
        "Select the default ISA tier ('auto' = best available). Raises ValueError if unavailable.");
  m.def("get_isa", [] { return std::string(tier_name(default_tier())); }, "Name of the default ISA tier.");
  m.def("set_num_threads", [](int n) { ThreadPool::global().set_num_threads(n); }, py::arg("n"),
        "Resize the persistent thread pool (threads in total, caller included).");
  m.def("get_num_threads", [] { return ThreadPool::global().num_threads(); });
}

}  // namespace xsil::bind
