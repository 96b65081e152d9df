"""The app's screens, one module each; each module names its screen class `SCREEN`."""
