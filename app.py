"""hierdemo Gradio app: `python app.py` (see README for the environment variables)."""

from hierdemo.webapp import main

if __name__ == "__main__":
    main()
