from portier.status import OK, Code, PortierError, Status, code_display


def test_default_is_ok_and_truthy():
    assert Status() == OK
    assert str(OK) == "OK"
    assert bool(OK)


def test_failure_codes_print_display_name_and_are_falsy():
    for code in Code:
        if code == Code.OK:
            continue
        status = Status(code)
        assert not status
        assert str(status) == code.display_name


def test_display_names():
    assert Code.DOES_NOT_EXIST.display_name == "Does Not Exist"
    assert Code.MTU_EXCEEDED.display_name == "MTU Exceeded"
    assert code_display(120) == "Unknown (120)"


def test_chaining_outer_to_inner_as_the_readme_shows():
    inner = Status(Code.DOES_NOT_EXIST, "Interface eth0 does not exist")
    outer = inner.wrap("Failed to get interface index")
    assert (
        str(outer) == "Does Not Exist: Failed to get interface index: Interface eth0 does not exist"
    )


def test_three_levels_and_empty_middle_level():
    status = (
        Status(Code.MALFORMED_PACKET, "Bad checksum")
        .wrap("Packet validation failed")
        .wrap("Could not receive ether frame")
    )
    assert str(status) == (
        "Malformed Packet: Could not receive ether frame: Packet validation failed: Bad checksum"
    )
    status = (
        Status(Code.UNEXPECTED_FAILURE, "Failed to set MULTICAST flag")
        .wrap("")
        .wrap("Failed to open socket")
    )
    assert str(status) == "Unexpected Failure: Failed to open socket: Failed to set MULTICAST flag"


def test_wrapping_ok_stays_plain_ok():
    assert OK.wrap("context") == OK
    assert str(OK.wrap("context")) == "OK"


def test_error_carries_status():
    error = PortierError.of(Code.INVALID_ARGUMENT, "bad").wrap("outer")
    assert error.status.code == Code.INVALID_ARGUMENT
    assert str(error) == "Invalid Argument: outer: bad"
