#include "python/handles.hpp"

namespace mcache::python {

py::tuple py_stream::next() {
  {
    std::lock_guard<std::mutex> guard{mutex_};
    if (!stream_ || next_ >= size_) {  // exhausted is exhausted, whatever became of its source
      stream_.reset();
      throw py::stop_iteration();
    }
  }
  check_source_();
  bool exhausted = false;
  std::string name;
  at::Tensor t;
  {
    without_gil unlocked;  // waits for the slot's copy, or for the ring's fills as it goes
    std::lock_guard<std::mutex> guard{mutex_};  // threads sharing one stream take turns
    if (!stream_ || next_ >= size_) {
      exhausted = true;
      stream_.reset();  // the last streamed tensor was valid until this step, as any is until the next
    } else {
      auto i = next_++;
      t = stream_->get(i);
      name = stream_->name(i);
    }
  }
  if (exhausted)
    throw py::stop_iteration();
  return py::make_tuple(name, t);
}

std::shared_ptr<py_lease> py_session::acquire(const std::string& model, const py::object& wait) {
  auto w = wait_of(wait);
  auto l = call_that_may_wait(*box_, [&](session& s) { return s.acquire(model, w); });
  return std::make_shared<py_lease>(box_, std::move(l));
}

std::vector<std::shared_ptr<py_lease>> py_session::acquire_all(const std::vector<std::string>& models,
                                                             const py::object& wait) {
  auto w = wait_of(wait);
  auto ls = call_that_may_wait(*box_, [&](session& s) { return s.acquire_all(models, w); });
  std::vector<std::shared_ptr<py_lease>> out;
  for (auto& l : ls)
    out.push_back(std::make_shared<py_lease>(box_, std::move(l)));
  return out;
}

std::shared_ptr<py_pin> py_session::pin(const std::shared_ptr<py_lease>& lease, const py::object& device,
                                      const py::object& working_bytes, const py::object& wait) {
  auto working = bytes_of(working_bytes, "working");
  if (!lease)
    fail(errc::invalid_lease, "pin needs a lease, not None");
  const auto& l = *lease;
  if (l.box() != box_)
    fail(errc::foreign_lease, "the lease on '" + l.model() + "' belongs to another session");
  auto w = wait_of(wait);
  auto where = device_of(device);
  auto p = call_that_may_wait(*box_, [&](session& s) {
    const auto& held = l.get_locked();  // under the session's mutex: the lease is this session's
    if (where.where == py_device::any)
      return s.pin_anywhere(held, working, w);
    return s.pin(held, where.where == py_device::cpu ? cpu_device : where.number, working, w);
  });
  return std::make_shared<py_pin>(box_, std::move(p));
}

bytes_t py_session::offload(const py::object& device, const std::string& model, const py::object& bytes) {
  auto where = device_of(device);
  if (where.where != py_device::index || where.number < 0)
    fail(errc::invalid_device, "offload frees one GPU's memory: give its index, not " + py::repr(device).cast<std::string>());
  auto at_least = bytes_of(bytes, "bytes");
  bytes_t freed = 0;
  with_session(*box_, [&] { freed = box_->s->offload(where.number, model, at_least); });
  return freed;
}

bytes_t py_session::trim_ram(const std::string& model, const py::object& bytes) {
  auto at_least = bytes_of(bytes, "bytes");
  bytes_t freed = 0;
  with_session(*box_, [&] { freed = box_->s->trim_ram(model, at_least); });
  return freed;
}

std::vector<named_tensor> full_pin_tensors(const pin_handle& pin) {
  if (pin.partial())
    fail(errc::invalid_argument, "the pin of '" + pin.model() + "' is partial: its streamed tensors have no "
                                 "lasting device copy; use stream(), or pin with more room");
  return pin.tensors().tensors;
}

void bind_handles(py::module_& m) {
  py::class_<py_lease, std::shared_ptr<py_lease>>(m, "Lease")
    .def_property_readonly("model", &py_lease::model)
    .def_property_readonly("bytes", &py_lease::bytes)
    .def_property_readonly("held", &py_lease::held)
    .def("release", &py_lease::release, "Ends the lease; a second call does nothing.")
    .def("tensor", [](const py_lease& l, const std::string& name) {
      for (const auto& t : l.locked([](const lease& h) { return h.host().tensors; }))
        if (t.name == name)
          return t.tensor;
      fail(errc::invalid_argument, "model '" + l.model() + "' has no tensor '" + name + "'");
    }, "The RAM copy of a tensor: the cache's own memory, no copy.")
    .def("state_dict", [](const py_lease& l) {
      return state_dict_of(l.locked([](const lease& h) { return h.host().tensors; }));
    })
    .def("__enter__", [](std::shared_ptr<py_lease> l) { return l; })
    .def("__exit__", [](py_lease& l, py::args) { l.release(); return false; })
    .def("__repr__", [](const py_lease& l) {
      return "<mcache.Lease '" + l.model() + "' " + std::to_string(l.bytes()) + " B" + (l.held() ? "" : " released") + ">";
    });

  py::class_<py_pin, std::shared_ptr<py_pin>>(m, "Pin")
    .def_property_readonly("model", &py_pin::model)
    .def_property_readonly("device", [](const py_pin& p) { return device_name(p.device()); })
    .def_property_readonly("torch_device", [](const py_pin& p) {
      return p.locked([](const pin_handle& h) { return h.torch_device(); });
    }, "The torch.device the pin's tensors are on (cpu for a simulated device).")
    .def_property_readonly("held", &py_pin::held)
    .def_property_readonly("partial", [](const py_pin& p) { return p.locked([](const pin_handle& h) { return h.partial(); }); })
    .def_property_readonly("resident_bytes", [](const py_pin& p) { return p.locked([](const pin_handle& h) { return h.resident_bytes(); }); })
    .def_property_readonly("working_bytes", [](const py_pin& p) { return p.locked([](const pin_handle& h) { return h.working_bytes(); }); })
    .def("release", &py_pin::release, "Ends the pin; a second call does nothing.")
    .def("tensor", [](const py_pin& p, const std::string& name) -> py::object {
      auto t = p.locked([&](const pin_handle& h) { return h.tensor(name); });
      if (!t.defined())
        return py::none();  // no such tensor, or it is not resident (stream it)
      return py::cast(t);
    }, "The device copy of a tensor (None if it is not resident: use stream()). No copy.")
    .def("state_dict", [](const py_pin& p) {
      return state_dict_of(p.locked([](const pin_handle& h) { return full_pin_tensors(h); }));
    }, "Every tensor's device copy, by name (a full pin only). No copy.")
    .def("stream", [](std::shared_ptr<py_pin> p) {
      std::unique_ptr<tensor_stream> s{p->locked([](const pin_handle& h) { return new tensor_stream(h.stream()); })};
      return std::make_shared<py_stream>(std::move(s), [p] {
        if (!p->held())
          fail(errc::invalid_pin, "the pin of '" + p->model() + "' was released while its stream was in use");
      });
    })
    .def("__enter__", [](std::shared_ptr<py_pin> p) { return p; })
    .def("__exit__", [](py_pin& p, py::args) { p.release(); return false; })
    .def("__repr__", [](const py_pin& p) {
      return "<mcache.Pin '" + p.model() + "' on " + (p.device() == cpu_device ? std::string{"cpu"} : std::to_string(p.device()))
             + (p.held() ? "" : " released") + ">";
    });

  py::class_<py_stream, std::shared_ptr<py_stream>>(m, "Stream")
    .def("__iter__", [](std::shared_ptr<py_stream> s) { return s; })
    .def("__next__", &py_stream::next)
    .def("__len__", &py_stream::size);

  py::class_<py_session>(m, "Session")
    .def("acquire", &py_session::acquire, py::arg("model"), py::arg("wait") = py::none())
    .def("acquire_all", &py_session::acquire_all, py::arg("models"), py::arg("wait") = py::none())
    .def("pin", &py_session::pin, py::arg("lease"), py::arg("device") = py::none(), py::arg("working") = py::int_(0),
         py::arg("wait") = py::none())
    .def("offload", &py_session::offload, py::arg("device"), py::arg("model") = "", py::arg("bytes") = py::int_(0))
    .def("trim_ram", &py_session::trim_ram, py::arg("model") = "", py::arg("bytes") = py::int_(0));
}

} // namespace mcache::python
