// Note [The Python binding] (module.cpp), the fleet's part: `mcache.Router`, a router over mcache-node
// processes (Note [The fleet], runtime/fleet/router.hpp) for a Python front end that outgrows one machine.
// A call that waits lets the GIL go; a failure is the package's Error subclass of its code, as everywhere.

#include "runtime/fleet/router.hpp"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>

namespace py = pybind11;
using namespace mcache;

namespace {

std::chrono::milliseconds milliseconds_of(double seconds, const char* what) {
  if (!(seconds >= 0) || seconds > 86400.0)  // also NaN
    throw request_error(failure{errc::invalid_argument, std::string{what} + " must be from 0 to 86400 seconds"});
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(seconds * 1000)));
}

py::dict to_dict(const fleet::job_result& r) {
  py::dict d;
  d["key"] = r.key;
  d["node"] = r.node;
  d["output"] = r.output;
  d["attempt"] = r.attempt;
  d["queued_s"] = static_cast<double>(r.queued_ns) / 1e9;
  d["run_s"] = static_cast<double>(r.run_ns) / 1e9;
  return d;
}

} // namespace

void bind_fleet(py::module_& m) {
  py::class_<fleet::router>(m, "Router", "Routes jobs to mcache-node processes: see mcache.Router.")
    .def(py::init([](const std::vector<std::string>& nodes, const std::string& policy, const std::string& tls_cert,
                     const std::string& tls_key, const std::string& tls_ca, double wait_for_node, double job_timeout,
                     const std::string& name) {
           fleet::router_options o;
           for (const auto& n : nodes)
             o.nodes.push_back(fleet::parse_endpoint(n));
           if (policy == "round_robin")
             o.policy = fleet::routing_policy::round_robin;
           else if (policy != "residency")
             throw request_error(failure{errc::invalid_argument, "policy must be 'residency' or 'round_robin', not '"
                                                                   + policy + "'"});
           o.tls = {tls_cert, tls_key, tls_ca, ""};
           o.wait_for_node = milliseconds_of(wait_for_node, "wait_for_node");
           o.job_timeout = milliseconds_of(job_timeout, "job_timeout");
           o.name = name;
           return std::make_unique<fleet::router>(o);
         }),
         py::arg("nodes"), py::kw_only(), py::arg("policy") = "residency", py::arg("tls_cert") = "",
         py::arg("tls_key") = "", py::arg("tls_ca") = "", py::arg("wait_for_node") = 10.0,
         py::arg("job_timeout") = 600.0, py::arg("name") = "")
    .def(
      "run",
      [](fleet::router& r, const std::string& pipeline, const std::vector<std::string>& models,
         const std::map<std::string, std::string>& params, const std::string& key, int priority, double deadline) {
        fleet::job_request req;
        req.key = key;
        req.pipeline = pipeline;
        req.models = models;
        req.params = params;
        req.priority = priority;
        req.deadline_ms = static_cast<std::uint64_t>(milliseconds_of(deadline, "deadline").count());
        fleet::job_result result;
        {
          py::gil_scoped_release nogil;
          result = r.run(std::move(req));
        }
        return to_dict(result);
      },
      py::arg("pipeline"), py::arg("models") = std::vector<std::string>{}, py::arg("params") = std::map<std::string, std::string>{},
      py::kw_only(), py::arg("key") = "", py::arg("priority") = 0, py::arg("deadline") = 0.0)
    .def(
      "wait_for_nodes",
      [](fleet::router& r, std::size_t count, double timeout) {
        auto limit = milliseconds_of(timeout, "timeout");
        py::gil_scoped_release nogil;
        return r.wait_for_nodes(count, limit);
      },
      py::arg("count"), py::arg("timeout") = 10.0)
    .def("stats", [](fleet::router& r) {
      fleet::router_stats st;
      {
        py::gil_scoped_release nogil;
        st = r.stats();
      }
      py::dict d;
      d["accepted"] = st.accepted;
      d["done"] = st.done;
      d["failed"] = st.failed;
      d["resent"] = st.resent;
      d["late_dropped"] = st.late_dropped;
      d["in_flight"] = st.in_flight;
      py::list nodes;
      for (const auto& n : st.nodes) {
        py::dict x;
        x["address"] = n.where.host + ":" + std::to_string(n.where.port);
        x["name"] = n.name;
        x["up"] = n.up;
        x["connects"] = n.connects;
        x["sent"] = n.sent;
        x["answered"] = n.answered;
        x["lost"] = n.lost;
        x["reported"] = n.reported;
        x["jobs_served"] = n.jobs_served();
        x["jobs_failed"] = n.last.jobs_failed;  // since the node process started (its last summary)
        x["bytes_to_devices"] = n.bytes_to_devices();
        x["queued"] = n.last.queued;
        x["last_error"] = n.last_error;
        nodes.append(x);
      }
      d["nodes"] = nodes;
      return d;
    })
    .def_property_readonly("name", &fleet::router::name);
}
