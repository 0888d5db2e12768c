"""zray.rllib — planned; see the issues."""
