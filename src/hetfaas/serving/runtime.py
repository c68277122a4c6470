"""Real mode: the Scheduler placing requests on devices that load and run torch models.

``GPUManager`` is one node's devices: CUDA devices when there are GPUs, otherwise CPU
"devices", each with a memory budget (so every path runs without a GPU). It loads, evicts and
runs models and can be told to fail a device (a fault the real hardware will not show on
demand). ``Runtime`` holds the Scheduler (the same object the simulator drives) under one
lock, one thread per device, and a record per request: queueing, load and inference time, hit
or miss, retries.

Faults: a loader that raises fails its request with ModelLoadError (not retried: it would
raise again) and the model leaves the cache; a handler that raises fails its request with
that error; a device that fails (DeviceFailed from the manager, or a CUDA error) is taken out,
its cache is dropped, its queued requests go to other devices and the request it was running
is retried elsewhere up to ``max_retries`` times (inference is idempotent).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..exceptions import ConfigurationError, DeviceFailed, ModelLoadError
from .functions import InferenceFunction, ModelSpec, load_model
from .policies import Policy, PolicyParams
from .scheduler import Scheduler, Start


@dataclass
class RequestRecord:
    """What happened to one request (seconds; ``hit`` of the attempt that ran)."""

    request: int
    model: str
    submitted: float
    device: int = -1
    hit: bool = False
    queue_s: float = 0.0
    load_s: float = 0.0
    infer_s: float = 0.0
    total_s: float = 0.0
    retries: int = 0
    error: str = ""


def _device_error(exc: BaseException | None) -> bool:
    """Whether a torch error means the device itself failed (not the model or the input)."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        mark in text for mark in ("CUDA error", "device-side assert", "ECC error", "NVML")
    )


class GPUManager:
    """The devices of one node: loads, evicts and runs models; reports memory and busy state."""

    def __init__(self, devices: Sequence[tuple[str, int]], node: int = 0) -> None:
        if not devices:
            raise ConfigurationError("a GPUManager needs at least one device")
        for dev, mem in devices:
            if not isinstance(mem, int) or mem <= 0:
                raise ConfigurationError(f"device {dev!r}: memory must be a positive int")
        self.node = node
        self.devices = [d for d, _ in devices]
        self.memory = [m for _, m in devices]
        self.models: list[dict[str, Any]] = [{} for _ in devices]
        self.model_bytes: list[dict[str, int]] = [{} for _ in devices]
        self.busy = [False] * len(devices)
        self._fail_next = [False] * len(devices)

    @classmethod
    def cpu(cls, n_devices: int = 2, memory_bytes: int = 256 << 20, node: int = 0) -> GPUManager:
        """``n_devices`` CPU "devices" with ``memory_bytes`` of model memory each."""
        return cls([("cpu", memory_bytes)] * n_devices, node)

    @classmethod
    def detect(cls, fraction: float = 0.8, node: int = 0) -> GPUManager:
        """This node's GPUs with ``fraction`` of their memory for models; CPU when none."""
        import torch

        if not torch.cuda.is_available():
            return cls.cpu(node=node)
        n = torch.cuda.device_count()
        mems = [int(torch.cuda.get_device_properties(i).total_memory * fraction) for i in range(n)]
        return cls([(f"cuda:{i}", mems[i]) for i in range(n)], node)

    def fail_next(self, local: int) -> None:
        """Make the next request on device ``local`` fail mid-request (fault injection)."""
        self._fail_next[local] = True

    def free_bytes(self, local: int) -> int:
        """Model memory of device ``local`` not taken by resident models."""
        return self.memory[local] - sum(self.model_bytes[local].values())

    def status(self) -> list[dict[str, Any]]:
        """Per device: its name, whether it runs a request, free bytes and resident models."""
        return [
            {
                "device": self.devices[i],
                "node": self.node,
                "busy": self.busy[i],
                "free_bytes": self.free_bytes(i),
                "models": sorted(self.models[i]),
            }
            for i in range(len(self.devices))
        ]

    def evict(self, local: int, name: str) -> None:
        self.models[local].pop(name, None)
        self.model_bytes[local].pop(name, None)

    def load(self, local: int, spec: ModelSpec) -> float:
        t0 = time.perf_counter()
        try:
            module = load_model(spec, self.devices[local])
            self._sync(local)
        except (ModelLoadError, RuntimeError) as exc:
            cause = exc.__cause__ if isinstance(exc, ModelLoadError) else exc
            if _device_error(cause):  # the device broke, not the model
                raise DeviceFailed(f"device {self.devices[local]} failed: {exc}") from exc
            raise
        self.models[local][spec.name] = module
        self.model_bytes[local][spec.name] = spec.size_bytes
        return time.perf_counter() - t0

    def run(self, local: int, spec: ModelSpec, batch: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        if self._fail_next[local]:
            self._fail_next[local] = False
            raise DeviceFailed(f"device {self.devices[local]} of node {self.node} failed")
        try:
            out = spec.handler(self.models[local][spec.name], batch)
            self._sync(local)
        except RuntimeError as exc:
            if _device_error(exc):
                raise DeviceFailed(f"device {self.devices[local]} failed: {exc}") from exc
            raise
        return out, time.perf_counter() - t0

    def drop_all(self, local: int) -> None:
        self.models[local].clear()
        self.model_bytes[local].clear()

    def _sync(self, local: int) -> None:
        if str(self.devices[local]).startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.devices[local])


class Runtime:
    """Serve inference requests on the managers' devices with a scheduling policy."""

    def __init__(
        self,
        function: InferenceFunction,
        managers: Sequence[GPUManager] | None = None,
        policy: str | Policy = "lalb+o3",
        params: PolicyParams | None = None,
        max_retries: int = 2,
    ) -> None:
        if not function.specs:
            raise ConfigurationError("register at least one model before starting a Runtime")
        self.function = function
        self.managers = list(managers) if managers is not None else [GPUManager.detect()]
        self.max_retries = max_retries
        self.names = list(function.specs)
        self._index = {n: i for i, n in enumerate(self.names)}
        self.slots = [(mgr, local) for mgr in self.managers for local in range(len(mgr.devices))]
        sizes = [function.specs[n].size_bytes for n in self.names]
        # estimates for the rules that weigh times: refined by measurements as requests run
        loads = [0.05 + s / 1e9 for s in sizes]
        infers = [0.005 + s / 1e10 for s in sizes]
        self.scheduler = Scheduler(
            [mgr.memory[local] for mgr, local in self.slots],
            sizes,
            loads,
            infers,
            policy,
            params,
            [mgr.node for mgr, _ in self.slots],
        )
        self.records: list[RequestRecord] = []
        self._futures: dict[int, concurrent.futures.Future] = {}
        self._batches: dict[int, Any] = {}
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, args=(d,), daemon=True, name=f"hetfaas-dev{d}")
            for d in range(len(self.slots))
        ]
        for t in self._threads:
            t.start()

    # -- caller side -----------------------------------------------------------------------
    def submit(self, model_name: str, batch: Any) -> concurrent.futures.Future:
        """Queue a request; the future's result is the handler's output."""
        self.function.spec(model_name)  # UnknownModel names the registered ones
        model = self._index.get(model_name)
        if model is None:
            raise ConfigurationError(
                f"model {model_name!r} was registered after the Runtime started"
            )
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._closed:
                raise ConfigurationError("this Runtime is closed")
            r = len(self.records)
            rec = RequestRecord(r, model_name, time.perf_counter())
            self.scheduler.check(model)  # ModelTooLarge, DeviceFailed before anything is kept
            self.records.append(rec)
            self._futures[r] = fut
            self._batches[r] = batch
            self.scheduler.submit(r, model)
            self._cv.notify_all()
        return fut

    def infer(self, model_name: str, batch: Any) -> Any:
        return self.submit(model_name, batch).result()

    def close(self) -> None:
        """Run what is queued, then stop the device threads and drop the models."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()
        for mgr in self.managers:
            for local in range(len(mgr.devices)):
                mgr.drop_all(local)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- device threads --------------------------------------------------------------------
    def _serve(self, d: int) -> None:
        mgr, local = self.slots[d]
        sched, cv = self.scheduler, self._cv
        while True:
            with cv:
                job = None
                while not sched.state.failed[d]:
                    job = sched.next(d)
                    if job is not None or self._closed:
                        break
                    cv.wait()
                if job is None:
                    return
                rec = self.records[job.request]
                batch = self._batches[job.request]
                mgr.busy[local] = True
            spec = self.function.specs[self.names[job.model]]
            start = time.perf_counter()
            load_s = 0.0
            try:
                for victim in job.evicted:
                    mgr.evict(local, self.names[victim])
                if not job.hit:
                    load_s = mgr.load(local, spec)
                out, infer_s = mgr.run(local, spec, batch)
            except DeviceFailed as exc:
                mgr.busy[local] = False
                self._device_failed(d, exc)
                return
            except ModelLoadError as exc:
                mgr.evict(local, spec.name)
                self._finish(d, job, rec, start, load_s, 0.0, error=exc, drop=True)
                continue
            except Exception as exc:
                self._finish(d, job, rec, start, load_s, 0.0, error=exc)
                continue
            self._finish(d, job, rec, start, load_s, infer_s, result=out)

    def _finish(
        self,
        d: int,
        job: Start,
        rec: RequestRecord,
        start: float,
        load_s: float,
        infer_s: float,
        result: Any = None,
        error: BaseException | None = None,
        drop: bool = False,
    ) -> None:
        mgr, local = self.slots[d]
        now = time.perf_counter()
        with self._cv:
            self.scheduler.complete(d)
            if drop:  # the model never made it into memory
                self.scheduler.state.drop(d, job.model)
            mgr.busy[local] = False
            rec.device, rec.hit = d, job.hit
            rec.queue_s = start - rec.submitted
            rec.load_s, rec.infer_s, rec.total_s = load_s, infer_s, now - rec.submitted
            state = self.scheduler.state
            if load_s:  # running estimates for the rules that weigh times
                state.load_times[job.model] = 0.8 * state.load_times[job.model] + 0.2 * load_s
            if infer_s:
                state.infer_times[job.model] = 0.8 * state.infer_times[job.model] + 0.2 * infer_s
            fut = self._futures.pop(job.request)
            del self._batches[job.request]
        if error is not None:
            rec.error = repr(error)
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def _device_failed(self, d: int, exc: DeviceFailed) -> None:
        mgr, local = self.slots[d]
        mgr.drop_all(local)
        failed_futs = []
        with self._cv:
            pairs = self.scheduler.fail(d)
            for i, (r, m) in enumerate(pairs):
                rec = self.records[r]
                if i == 0:  # the request it was running: fail() lists it first
                    rec.retries += 1
                    if rec.retries > self.max_retries:
                        rec.error = repr(exc)
                        failed_futs.append((self._futures.pop(r), exc))
                        del self._batches[r]
                        continue
                try:
                    self.scheduler.submit(r, m)
                except Exception as err:  # no device left that can hold it
                    rec.error = repr(err)
                    failed_futs.append((self._futures.pop(r), err))
                    del self._batches[r]
            self._cv.notify_all()
        for fut, err in failed_futs:
            fut.set_exception(err)

    # -- reports ---------------------------------------------------------------------------
    def summary(self) -> dict[str, float]:
        done = [r for r in self.records if r.total_s > 0 and not r.error]
        if not done:
            return {"requests": 0}
        lat = sorted(r.total_s for r in done)
        misses = [r for r in done if not r.hit]
        return {
            "requests": len(done),
            "avg_latency_s": sum(lat) / len(lat),
            "p99_latency_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "miss_ratio": sum(not r.hit for r in done) / len(done),
            "avg_load_s": sum(r.load_s for r in misses) / max(1, len(misses)),
            "avg_infer_s": sum(r.infer_s for r in done) / len(done),
        }
