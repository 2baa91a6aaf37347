// One live image: h5web's HeatmapVis (axes, colour bar, zoom, tooltips) over the
// fetched float32 block, with the colour range from ColourControls.

import { HeatmapVis, type AxisParams, type ColorMap } from '@h5web/lib';
import ndarray from 'ndarray';
import { useEffect, useMemo } from 'react';

import { colourDomain, type ColourResult, type ColourSettings } from '../contrast';
import { debug, type RenderRecord } from '../debug';
import type { Image } from '../live';

const MAX_RECORDS = 5000;

interface Props {
  panel: RenderRecord['panel'];
  image: Image;
  colours: ColourSettings;
  colorMap: ColorMap;
  invertColorMap: boolean;
  title: string;
  abscissa: AxisParams;
  ordinate: AxisParams;
  aspect: 'equal' | 'auto';
  children?: (result: ColourResult) => React.ReactNode; // controls above the image
  overlay?: React.ReactNode; // drawn inside the plot (h5web annotations)
}

export function ImageView(props: Props) {
  const { panel, image, colours } = props;
  const dataArray = useMemo(() => ndarray(image.data, image.shape), [image]);
  const colour = useMemo(() => colourDomain(image.data, colours), [image, colours]);

  useEffect(() => {
    if (panel === 'slice') debug.colourDomain = colour.shown;
  }, [panel, colour]);

  useEffect(() => {
    // The WebGL canvas draws on the next animation frame after React commits; the
    // second frame is when those pixels are on screen.
    let second = 0;
    const first = requestAnimationFrame(() => {
      second = requestAnimationFrame(() => {
        debug.renders.push({
          panel, index: image.index, generation: image.generation, framesReceived: image.framesReceived,
          nProjections: image.nProjections, fetchedAt: image.fetchedAt, drawnAt: Date.now(),
        });
        if (debug.renders.length > MAX_RECORDS) debug.renders.splice(0, debug.renders.length - MAX_RECORDS);
      });
    });
    return () => {
      cancelAnimationFrame(first);
      cancelAnimationFrame(second);
    };
  }, [panel, image]);

  return (
    <>
      {props.children?.(colour)}
      <div className="vis" data-panel={panel}>
        <HeatmapVis
          dataArray={dataArray}
          domain={colour.shown}
          colorMap={props.colorMap}
          invertColorMap={props.invertColorMap}
          aspect={props.aspect}
          title={props.title}
          abscissaParams={props.abscissa}
          ordinateParams={props.ordinate}
          showGrid={false}
        >
          {props.overlay}
        </HeatmapVis>
      </div>
    </>
  );
}
