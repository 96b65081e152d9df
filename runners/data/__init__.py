"""What runners read: eval and training text, instruction data, cheap checks of a user's file."""
