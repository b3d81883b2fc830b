"""sdn.ovs: errors from ovsdbapp become one line."""

from ovsdbapp.exceptions import OvsdbConnectionUnavailable
from sdn import ovs
def test_an_ovsdbapp_error_that_cannot_render_itself_is_still_one_line():
    err = OvsdbConnectionUnavailable.__new__(OvsdbConnectionUnavailable)
    RuntimeError.__init__(err, "boom")
    assert ovs._reason(err) == "OvsdbConnectionUnavailable('boom',)"
    assert ovs._reason(RuntimeError("plain")) == "plain"
