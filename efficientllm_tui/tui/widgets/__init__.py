"""Small chart and list widgets drawn with braille and block characters (no plotting library)."""
