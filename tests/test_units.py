"""Fast tests of pure logic that needs no cluster: the resource-fit check,
a node's resource accounting, a raylet's view of the other nodes, and a
core worker's reference table."""
from zray._private.resource_set import fits
from zray.broker import protocol as p
from zray.raylet.cluster_view import ClusterView
from zray.raylet.resources import ResourceSet
from zray.worker.reference_table import PENDING, READY, ReferenceTable

ME, A, B = b"m" * 16, b"a" * 16, b"b" * 16


# -- the fit check ---------------------------------------------------------
def test_fits_tolerates_float_sums():
    assert fits({"CPU": 0.1 + 0.2}, {"CPU": 0.3})
    assert not fits({"CPU": 0.31}, {"CPU": 0.3})


def test_fits_counts_a_missing_resource_as_zero():
    assert not fits({"GPU": 1}, {"CPU": 4})
    assert fits({"GPU": 0}, {"CPU": 4})
    assert fits({}, {})


# -- one node's accounting -------------------------------------------------
def test_resource_set_acquire_release_round_trip():
    node = ResourceSet({"CPU": 2, "GPU": 1})
    assert node.fits({"CPU": 2}) and node.feasible({"CPU": 2})
    node.acquire({"CPU": 1.5})
    assert not node.fits({"CPU": 1}) and node.feasible({"CPU": 1})
    assert node.slots({"CPU": 0.25}) == 2
    node.release({"CPU": 1.5})
    assert node.available == {"CPU": 2.0, "GPU": 1.0}


def test_resource_set_never_feasible_beyond_its_total():
    node = ResourceSet({"CPU": 2})
    assert not node.feasible({"CPU": 3})
    assert not node.feasible({"custom": 1})


def test_resource_set_bundle_resources_come_and_go():
    node = ResourceSet({"CPU": 2})
    node.add({"CPU_group_x": 1})
    assert node.fits({"CPU_group_x": 1})
    node.remove({"CPU_group_x": 1})
    assert "CPU_group_x" not in node.total and "CPU_group_x" not in node.available


# -- the cluster view ------------------------------------------------------
def _node(node_id, cpus, free=None, alive=True):
    return p.NodeRow(node_id, f"tcp://10.0.0.{node_id[0] % 250}:1", "tcp://10.0.0.1:2",
                     "10.0.0.1", "h", 1, {"CPU": cpus},
                     {"CPU": cpus if free is None else free}, 0, 0, alive, 0.0, "/tmp")


def test_with_room_picks_the_freest_other_node_and_books_it():
    view = ClusterView(ME)
    view.load([_node(ME, 8), _node(A, 4, free=1), _node(B, 4, free=3)])
    assert view.with_room({"CPU": 1}).node_id == B
    assert view.with_room({"CPU": 1}).node_id == B        # 3 -> 2 free: still the freest
    assert view.with_room({"CPU": 2}) is None             # booked until their next report
    view.on_resources(p.ResourcesEvent(B, {"CPU": 3}, {"CPU": 4}))
    assert view.with_room({"CPU": 2}).node_id == B


def test_a_dead_node_is_not_offered():
    view = ClusterView(ME)
    view.load([_node(ME, 1), _node(A, 4)])
    assert view.on_node_event(p.NodeEvent(p.NODE_REMOVED, _node(A, 4))) == A
    assert not view.alive(A) and view.address(A) is None
    assert view.with_room({"CPU": 1}) is None and view.feasible({"CPU": 4}) is None


def test_spread_goes_round_robin_over_nodes_that_could_run_it():
    view = ClusterView(ME)
    view.load([_node(ME, 2), _node(A, 2), _node(B, 1)])
    picks = [view.spread({"CPU": 2}, {"CPU": 2}) for _ in range(4)]
    assert sorted(set(picks)) == sorted({ME, A})           # B is too small
    assert picks[0] != picks[1] and picks[0] == picks[2]


# -- the reference table ---------------------------------------------------
def test_owned_entry_lives_while_any_hold_remains():
    table = ReferenceTable()
    entry = table.add_owned(b"o" * 16)
    entry.local, entry.submitted = 1, 1
    assert entry.state == PENDING
    assert table.release(b"o" * 16, "local") is None      # a submitted task still holds it
    assert table.release(b"o" * 16, "submitted") is entry  # the last hold: gone
    assert table.get(b"o" * 16) is None and len(table) == 0


def test_borrowers_keep_an_owned_entry():
    table = ReferenceTable()
    entry = table.add_owned(b"o" * 16, ret=[b"o" * 16, 0, b""])
    assert entry.state == READY
    entry.local, entry.borrowers = 1, {A}
    assert table.release(b"o" * 16, "local") is None
    assert table.remove_borrower(b"o" * 16, B) is None    # not a borrower: nothing changes
    assert table.remove_borrower(b"o" * 16, A) is entry
    assert len(table) == 0


def test_a_borrowed_entry_is_made_once():
    table = ReferenceTable()
    first, new = table.add_borrowed(b"x" * 16, ["tcp://h:1", A, 1, B])
    again, new_again = table.add_borrowed(b"x" * 16, ["tcp://h:1", A, 1, B])
    assert new and not new_again and first is again and not first.owned
