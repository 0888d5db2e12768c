"""zray.dashboard — planned; see the issues."""
