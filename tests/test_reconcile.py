"""The reconciler's plan: which changes recreate a VM, which only update the monitor."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.reconcile import (
    MONITOR_FIELDS,
    VM_FIELDS,
    Action,
    ActionKind,
    Plan,
    RunningVM,
    canonical_json,
    changed_fields,
    hash_spec,
    monitor_spec,
    plan,
    run_actions,
    spec_hash,
    vm_spec,
)
from nodeagent.spec.node import ServiceConfig

NET = {"interface": "fw-web", "guest_mac": "AA:FC:00:00:00:02", "guest_ip": "10.0.0.2"}
BASE: dict[str, Any] = {
    "name": "web",
    "image": "/img/web.ext4",
    "kernel": "/img/vmlinux",
    "vcpus": 1,
    "memory_mb": 256,
    "kernel_args": "console=ttyS0",
    "network": NET,
    "env": {"MODE": "prod", "LEVEL": "info"},
    "links": [{"service": "db", "env": "DB_URL", "port": 5432}],
    "health_check": {"type": "http", "port": 8080},
    "metadata": {"team": "core"},
    "port_forwards": [{"host_port": 8080, "vm_port": 8080}],
}
# Change these only on purpose: every running VM's recorded hash stops matching.
GOLDEN_JSON = (
    '{"env":{"LEVEL":"info","MODE":"prod"},"image":"/img/web.ext4","initrd":null,'
    '"kernel":"/img/vmlinux","kernel_args":"console=ttyS0","links":[{"env":"DB_URL",'
    '"port":5432,"protocol":"http","service":"db"}],"memory_mb":256,"network":'
    '{"guest_ip":"10.0.0.2","guest_mac":"AA:FC:00:00:00:02","interface":"fw-web"},'
    '"vcpus":1}'
)
GOLDEN_HASH = "32661b2204ac76e01623d46d1688db24e2339a8bc021afcb4aa02a30ea370628"


def svc(name: str = "web", **changes: Any) -> ServiceConfig:
    return ServiceConfig.model_validate({**BASE, "name": name, **changes})


def running(
    service: ServiceConfig, *, alive: bool = True, record: bool = True
) -> RunningVM:
    """The VM the driver would report after starting ``service``."""
    return RunningVM(
        name=service.name,
        spec_hash=spec_hash(service),
        alive=alive,
        pid=4242 if alive else None,
        applied=vm_spec(service) if record else None,
    )


def kinds(result: Plan) -> list[tuple[str, str]]:
    return [(a.kind, a.service) for a in result.actions]


RECREATE_TABLE = [
    ({"image": "/img/web-2.ext4"}, ("image",)),
    ({"kernel": "/img/vmlinux-6.1"}, ("kernel",)),
    ({"initrd": "/img/initrd"}, ("initrd",)),
    ({"vcpus": 2}, ("vcpus",)),
    ({"memory_mb": 512}, ("memory_mb",)),
    ({"kernel_args": "console=ttyS0 quiet"}, ("kernel_args",)),
    ({"network": {**NET, "interface": "fw-web2"}}, ("network.interface",)),
    ({"network": {**NET, "guest_mac": "AA:FC:00:00:00:03"}}, ("network.guest_mac",)),
    ({"network": {**NET, "guest_ip": "10.0.0.3"}}, ("network.guest_ip",)),
    ({"network": None, "health_check": None, "port_forwards": []}, ("network",)),
    ({"env": {"MODE": "dev", "LEVEL": "info"}}, ("env",)),
    ({"env": {"MODE": "prod"}}, ("env",)),
    ({"links": [{"service": "db", "env": "DB_URL", "port": 5433}]}, ("links",)),
    ({"links": []}, ("links",)),
    ({"vcpus": 2, "memory_mb": 512}, ("vcpus", "memory_mb")),
    ({"image": "/img/web-2.ext4", "env": {}}, ("image", "env")),
]


@pytest.mark.parametrize(("changes", "fields"), RECREATE_TABLE)
def test_vm_field_change_recreates(changes: dict[str, Any], fields: tuple[str, ...]):
    result = plan([svc(**changes)], [running(svc())], monitored={})
    assert result.actions == (
        Action("recreate", "web", f"{', '.join(fields)} changed", fields),
    )
    assert result.monitor_updates == ()


@pytest.mark.parametrize(("changes", "fields"), RECREATE_TABLE)
def test_vm_field_change_recreates_by_hash_without_record(
    changes: dict[str, Any], fields: tuple[str, ...]
):
    result = plan([svc(**changes)], [running(svc(), record=False)])
    assert result.actions == (Action("recreate", "web", "spec changed"),)


def test_reasons_name_fields_in_spec_order() -> None:
    result = plan([svc(memory_mb=512, vcpus=2)], [running(svc())])
    assert result.actions[0].reason == "vcpus, memory_mb changed"


MONITOR_TABLE = [
    ({"health_check": {"type": "tcp", "port": 8080}}, ("health_check",)),
    ({"health_check": {"type": "http", "port": 8080, "retries": 5}}, ("health_check",)),
    ({"health_check": None}, ("health_check",)),
    ({"metadata": {"team": "edge"}}, ("metadata",)),
    ({"metadata": {}}, ("metadata",)),
    ({"port_forwards": [{"host_port": 9090, "vm_port": 8080}]}, ("port_forwards",)),
    ({"port_forwards": []}, ("port_forwards",)),
    ({"metadata": {}, "port_forwards": []}, ("metadata", "port_forwards")),
]


@pytest.mark.parametrize(("changes", "fields"), MONITOR_TABLE)
def test_monitor_field_change_updates_without_restart(
    changes: dict[str, Any], fields: tuple[str, ...]
):
    changed = svc(**changes)
    assert spec_hash(changed) == spec_hash(svc())
    result = plan([changed], [running(svc())], monitored={"web": monitor_spec(svc())})
    assert result.actions == ()
    assert len(result.monitor_updates) == 1
    update = result.monitor_updates[0]
    assert (update.kind, update.service, update.fields) == ("update", "web", fields)
    assert update.reason == f"{', '.join(fields)} changed"


def test_recreate_takes_monitor_changes_along() -> None:
    result = plan(
        [svc(vcpus=2, metadata={})],
        [running(svc())],
        monitored={"web": monitor_spec(svc())},
    )
    assert kinds(result) == [("recreate", "web")]
    assert result.monitor_updates == ()


def test_adopted_vm_without_monitor_gets_every_monitor_field() -> None:
    result = plan([svc()], [running(svc())], monitored={})
    assert result.actions == ()
    [update] = result.monitor_updates
    assert (update.reason, update.fields) == ("not monitored", MONITOR_FIELDS)


def test_without_monitor_state_only_vms_are_planned() -> None:
    assert plan([svc(metadata={})], [running(svc())]).empty


@pytest.mark.parametrize("record", [True, False])
def test_dead_vm_is_recreated_as_not_running(record: bool) -> None:
    result = plan([svc()], [running(svc(), alive=False, record=record)])
    assert result.actions == (Action("recreate", "web", "not running"),)


def test_dead_vm_without_record_is_not_running_even_when_changed() -> None:
    result = plan([svc(vcpus=2)], [running(svc(), alive=False, record=False)])
    assert result.actions == (Action("recreate", "web", "not running"),)


def test_dead_vm_with_changes_lists_them() -> None:
    result = plan([svc(vcpus=2)], [running(svc(), alive=False)])
    assert result.actions == (Action("recreate", "web", "not running", ("vcpus",)),)


@pytest.mark.parametrize("alive", [True, False])
def test_unknown_vm_is_removed(alive: bool) -> None:
    result = plan([], [running(svc("ghost"), alive=alive)])
    assert result.actions == (Action("remove", "ghost", "removed from config"),)


def test_new_service_is_created() -> None:
    assert plan([svc()], []).actions == (Action("create", "web", "new service"),)


@pytest.mark.parametrize("record", [True, False])
def test_nothing_to_do_is_an_empty_plan(record: bool) -> None:
    services = [svc("a"), svc("b"), svc("c")]
    actual = [running(s, record=record) for s in services]
    monitored = {s.name: monitor_spec(s) for s in services}
    result = plan(services, actual, monitored=monitored)
    assert result == Plan()
    assert result.empty


def test_removes_then_recreates_then_creates_each_by_name() -> None:
    desired = [svc("d"), svc("b", vcpus=2), svc("c"), svc("a", vcpus=2), svc("e")]
    actual = [running(svc(n)) for n in ("z", "b", "y", "a", "e")]
    assert kinds(plan(desired, actual)) == [
        ("remove", "y"),
        ("remove", "z"),
        ("recreate", "a"),
        ("recreate", "b"),
        ("create", "c"),
        ("create", "d"),
    ]


def test_plan_does_not_depend_on_input_order() -> None:
    desired = [svc("d"), svc("b", vcpus=2), svc("c"), svc("a", vcpus=2)]
    actual = [running(svc(n)) for n in ("z", "b", "y", "a")]
    assert plan(desired, actual) == plan(desired[::-1], actual[::-1])


@pytest.mark.parametrize("side", ["desired", "actual"])
def test_duplicate_names_are_rejected(side: str) -> None:
    desired = [svc(), svc()] if side == "desired" else [svc()]
    actual = [running(svc()), running(svc())] if side == "actual" else []
    with pytest.raises(ValueError, match=f"service web: listed twice in {side}"):
        plan(desired, actual)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ({"a": 1, "b": 2}, {"a": 1, "b": 2}, ()),
        ({"a": 1, "b": 2}, {"b": 3, "a": 0}, ("b", "a")),
        ({"network": {"x": 1, "y": 2}}, {"network": {"x": 1, "y": 3}}, ("network.y",)),
        ({"network": None}, {"network": {"x": 1}}, ("network",)),
        ({"env": {"A": "1"}}, {"env": {"A": "2"}}, ("env",)),
        (
            {"health_check": {"port": 1}},
            {"health_check": {"port": 2}},
            ("health_check",),
        ),
        # A record from another agent version with a field this one dropped.
        ({"a": 1, "zz": 1, "old": 2}, {"a": 1}, ("old", "zz")),
        ({"a": 1}, {"a": 1, "new": 0}, ("new",)),
    ],
)
def test_changed_fields(
    old: dict[str, Any], new: dict[str, Any], expected: tuple[str, ...]
) -> None:
    assert changed_fields(old, new) == expected


def test_vm_spec_holds_exactly_the_vm_fields() -> None:
    spec = vm_spec(svc())
    assert tuple(spec) == VM_FIELDS
    assert not set(spec) & set(MONITOR_FIELDS)
    assert spec["network"] == NET
    assert canonical_json(spec)  # plain JSON data, recordable as is


def test_spec_hash_ignores_key_order() -> None:
    reordered = dict(reversed(list(BASE.items())))
    reordered["env"] = dict(reversed(list(BASE["env"].items())))
    reordered["network"] = dict(reversed(list(NET.items())))
    assert spec_hash(ServiceConfig.model_validate(reordered)) == spec_hash(svc())


def test_spec_hash_golden_value() -> None:
    assert canonical_json(vm_spec(svc())) == GOLDEN_JSON
    assert spec_hash(svc()) == GOLDEN_HASH


def test_spec_hash_is_the_same_in_another_interpreter() -> None:
    code = (
        "from tests.test_reconcile import svc;"
        "from nodeagent.reconcile import spec_hash;"
        "print(spec_hash(svc()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == spec_hash(svc())


# --- property: applying the plan converges, and a second plan is empty ---

NAMES = ("a", "b", "c", "d", "e")
services = st.builds(
    lambda name, image, vcpus, env, meta, forward: svc(
        name,
        image=image,
        vcpus=vcpus,
        env=env,
        metadata=meta,
        port_forwards=[{"host_port": forward, "vm_port": 80}],
    ),
    st.sampled_from(NAMES),
    st.sampled_from(["/img/one.ext4", "/img/two.ext4"]),
    st.integers(1, 2),
    st.dictionaries(st.sampled_from(["A", "B"]), st.sampled_from(["1", "2"])),
    st.dictionaries(st.sampled_from(["team"]), st.sampled_from(["x", "y"])),
    st.sampled_from([8080, 8081]),
)
found_vms = st.builds(
    lambda service, alive, record: running(service, alive=alive, record=record),
    services,
    st.booleans(),
    st.booleans(),
)


def apply(
    result: Plan,
    desired: list[ServiceConfig],
    actual: list[RunningVM],
    monitored: dict[str, dict[str, Any]],
) -> tuple[list[RunningVM], dict[str, dict[str, Any]]]:
    """What a driver that always succeeds leaves behind after ``result``."""
    wanted = {s.name: s for s in desired}
    state = {vm.name: vm for vm in actual}
    monitored = dict(monitored)
    for action in result.actions:
        assert (action.service in state) == (action.kind != "create")
        state.pop(action.service, None)
        monitored.pop(action.service, None)
        if action.kind != "remove":
            state[action.service] = running(wanted[action.service])
            monitored[action.service] = monitor_spec(wanted[action.service])
    for update in result.monitor_updates:
        monitored[update.service] = monitor_spec(wanted[update.service])
    return list(state.values()), monitored


@given(
    st.lists(services, unique_by=lambda s: s.name),
    st.lists(found_vms, unique_by=lambda vm: vm.name),
    st.lists(services, unique_by=lambda s: s.name),
)
def test_applying_the_plan_converges_and_replanning_is_empty(
    desired: list[ServiceConfig],
    actual: list[RunningVM],
    was_monitored: list[ServiceConfig],
) -> None:
    # The monitor only ever watches services that have a VM.
    found = {vm.name: vm for vm in actual}
    monitored = {s.name: monitor_spec(s) for s in was_monitored if s.name in found}
    wanted = {s.name: s for s in desired}
    result = plan(desired, actual, monitored=monitored)
    after, monitored_after = apply(result, desired, actual, monitored)

    assert {vm.name: vm.spec_hash for vm in after} == {
        s.name: spec_hash(s) for s in desired
    }
    # An adopted VM without a readable record keeps none; others match exactly.
    assert all(vm.applied in (None, vm_spec(wanted[vm.name])) for vm in after)
    assert all(vm.alive for vm in after)
    assert monitored_after == {s.name: monitor_spec(s) for s in desired}
    # Only what had to change was touched: a live, matching VM is left alone.
    for action in result.actions:
        vm = found.get(action.service)
        if action.kind == "recreate" and vm is not None:
            assert not vm.alive or vm.spec_hash != spec_hash(wanted[vm.name])
    assert plan(desired, after, monitored=monitored_after).empty


# --- run_actions ---


class Recorder:
    """An ``execute`` that logs starts and ends and counts concurrent calls."""

    def __init__(self, delay: float = 0.02, fail: frozenset[str] = frozenset()):
        self.delay = delay
        self.fail = fail
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.events: list[tuple[str, Action]] = []

    def __call__(self, action: Action) -> None:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.events.append(("start", action))
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
            self.events.append(("end", action))
        if action.service in self.fail:
            raise RuntimeError(f"service {action.service}: boom")

    def index(self, event: str, kind: str, pick: Callable[[Iterable[int]], int]) -> int:
        """``pick`` (min or max) of the positions of ``event`` for ``kind``."""
        return pick(
            i for i, (e, a) in enumerate(self.events) if e == event and a.kind == kind
        )


def mixed_actions(count: int) -> list[Action]:
    # Creates come first in the input: run_actions must order by phase itself.
    order: tuple[ActionKind, ...] = ("create", "recreate", "remove")
    return [Action(kind, f"{kind}-{i}", "test") for kind in order for i in range(count)]


@pytest.mark.parametrize("parallelism", [1, 3])
def test_run_actions_bounds_parallelism_and_orders_phases(parallelism: int) -> None:
    actions = mixed_actions(6)
    recorder = Recorder()
    results = run_actions(actions, recorder, parallelism=parallelism)

    assert [r.action for r in results] == actions
    assert all(r.ok for r in results)
    assert len(recorder.events) == 2 * len(actions)
    assert recorder.max_running == parallelism
    assert recorder.index("end", "remove", max) < recorder.index(
        "start", "recreate", min
    )
    assert recorder.index("end", "recreate", max) < recorder.index(
        "start", "create", min
    )


def test_run_actions_collects_errors_and_runs_the_rest() -> None:
    actions = mixed_actions(3)
    recorder = Recorder(delay=0, fail=frozenset({"remove-1", "create-0"}))
    results = run_actions(actions, recorder, parallelism=2)

    assert len(recorder.events) == 2 * len(actions)
    failed = {r.action.service: str(r.error) for r in results if not r.ok}
    assert failed == {
        "remove-1": "service remove-1: boom",
        "create-0": "service create-0: boom",
    }
    assert sum(r.ok for r in results) == len(actions) - 2


def test_run_actions_with_nothing_to_do() -> None:
    assert run_actions([], Recorder()) == []


def test_run_actions_rejects_zero_parallelism() -> None:
    with pytest.raises(ValueError, match="parallelism must be at least 1, got 0"):
        run_actions([], Recorder(), parallelism=0)


def test_action_as_dict() -> None:
    action = Action("recreate", "web", "vcpus changed", ("vcpus",))
    assert action.as_dict() == {
        "kind": "recreate",
        "service": "web",
        "reason": "vcpus changed",
        "fields": ["vcpus"],
    }


def running_with(spec: dict[str, Any], name: str = "web") -> RunningVM:
    return RunningVM(name, hash_spec(spec), True, 42, spec)


def test_the_node_command_line_is_part_of_the_compared_spec() -> None:
    service = svc()
    applied = vm_spec(service, "console=ttyS0 ip=10.0.0.2::10.0.0.1")
    moved = vm_spec(service, "console=ttyS0 ip=10.0.0.2::10.0.0.254")
    same = plan([service], [running_with(applied)], specs={"web": applied})
    assert same.empty
    [action] = plan([service], [running_with(applied)], specs={"web": moved}).actions
    assert (action.kind, action.reason) == ("recreate", "boot_args changed")


def test_boot_args_are_not_named_when_a_field_explains_the_change() -> None:
    old = vm_spec(svc(), "console=ttyS0 firework.env.MODE=prod")
    new = vm_spec(svc(env={"MODE": "dev"}), "console=ttyS0 firework.env.MODE=dev")
    [action] = plan([svc()], [running_with(old)], specs={"web": new}).actions
    assert action.reason == "env changed"
    assert action.fields == ("env",)


def test_spec_hash_with_boot_args_is_the_hash_of_the_applied_spec() -> None:
    service = svc()
    applied = vm_spec(service, "console=ttyS0")
    assert applied["boot_args"] == "console=ttyS0"
    assert spec_hash(service, "console=ttyS0") == hash_spec(applied)
    assert spec_hash(service) == hash_spec(vm_spec(service))
    assert spec_hash(service, "console=ttyS0") != spec_hash(service)
