"""A process other than rank 0 prints nothing while it trains, and prints again afterwards."""

import builtins

from mdistiller.engine import distributed


def test_print_is_silenced_on_other_ranks_and_given_back_after_training(capsys):
    original = builtins.print
    distributed._silence_print()
    try:
        print("hidden")
        print("forced", force=True)
        assert builtins.print is not original
    finally:
        distributed.cleanup_distributed(finished=False)  # not distributed here: only gives print back
    print("back")
    assert builtins.print is original
    assert capsys.readouterr().out == "forced\nback\n"
