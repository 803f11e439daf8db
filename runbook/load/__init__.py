"""The load driver: requests through the LB, one record each, on both targets."""
