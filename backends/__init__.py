"""xsil backend plugins (installed as ``xsil.backends``). Each backend is one small module; the
contract every backend follows is in README.md next to this file."""
